"""What the dashboard's streams send (SPEC §6), as bytes: `encode` (JSON
safe to drop into HTML), a device's row, an `Event` (its JSON for the
WebSocket and its SSE frame, encoded once), and a `Snapshot`: the rows of
the devices as of an event id, written on the event loop a chunk at a time.
Used by hub.py (the stream) and app.py (the endpoints)."""

from __future__ import annotations

import asyncio
import itertools
import json
import operator
import sys

from emulator.observe.counting import DeviceView

SNAPSHOT_CHUNK = 200  # devices a snapshot writes between two turns of the loop (~1-2.5 ms)


def encode(obj) -> str:
    """One line of JSON that is also safe to drop into HTML or a <script>:
    `<`, `>` and `&` are written as \\u escapes (they only occur inside
    strings), NaN and Infinity (which JSON has not) as strings."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_no_nan(obj), separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _no_nan(obj):
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


# What a device's row is made of, read in one C call (`lost` and `reconnects` are properties)
_ROW_FIELDS = operator.attrgetter("state", "reason", "since", "fw", "boot", "reset", "ip", "last", "last_at",
                                  "received", "lost", "reconnects", "wills")


def device_row(device_id: str, v: DeviceView, wall: float) -> dict:
    """A device as GET /api/devices lists it (SPEC §6). Call under the observer's lock."""
    return _row(device_id, _ROW_FIELDS(v), wall)


def _row(device_id: str, fields: tuple, wall: float) -> dict:
    state, reason, since, fw, boot, reset, ip, last, last_at, received, lost, reconnects, wills = fields
    return {
        "id": device_id,
        "online": state == "online",
        "state": state or "unknown",
        "reason": reason,
        "since": since,
        "fw": fw,
        "boot": boot,
        "reset": reset,
        "ip": ip,
        "last": last,
        "last_at": last_at,
        "age_s": None if last_at is None else round(max(wall - last_at, 0.0), 3),
        "received": received,
        "lost": lost,
        "reconnects": reconnects,
        "wills": wills,
    }


class Event:
    __slots__ = ("id", "type", "device", "json", "sse")

    def __init__(self, event_id: int, kind: str, device: str | None, obj: dict):
        self.id, self.type, self.device = event_id, kind, device
        self.json = encode(obj)
        self.sse = f"id: {event_id}\nevent: {kind}\ndata: {self.json}\n\n".encode()

    @classmethod
    def from_json(cls, text: str) -> "Event":
        """An event as the log holds it (its JSON line); ValueError if it is not one."""
        obj = json.loads(text)
        event_id, kind, device = (obj.get("id"), obj.get("type"), obj.get("device")) if isinstance(obj, dict) else (None,) * 3
        if isinstance(event_id, bool) or not isinstance(event_id, int) or not isinstance(kind, str) \
                or not (device is None or isinstance(device, str)):
            raise ValueError("not an event")
        ev = cls.__new__(cls)
        ev.id, ev.type, ev.device, ev.json = event_id, kind, device, text
        ev.sse = f"id: {event_id}\nevent: {kind}\ndata: {text}\n\n".encode()
        return ev


class Snapshot(Event):
    """A `snapshot` event: the rows of the devices as of event id `id`
    (each device's row fields as the hub's copy of them held then: tuples,
    never changed, so reading them later needs no lock), its JSON written
    on the loop SNAPSHOT_CHUNK devices at a time with a turn of the loop
    between chunks (at 10,000 devices it is ~3 MB: written in one go it
    would hold every other stream for ~100 ms). The same bytes as
    `encode()` of the whole object. `json` and `sse` are None until it is
    written; the clients it was handed to wait for it (Client.ready), and
    when the last of them leaves before it is written, the writing stops."""

    __slots__ = ("wall", "fields", "task", "users", "abandoned")

    def __init__(self, sid: int, wall: float, fields: dict[str, tuple]):
        self.id, self.type, self.device, self.json, self.sse = sid, "snapshot", None, None, None
        self.wall, self.fields = wall, fields
        self.task: asyncio.Task | None = None
        self.users: set = set()  # the clients (hub.Client) waiting for it
        self.abandoned = False  # no one waits for it any more, or it could not be written: not to be handed out
        if len(fields) <= SNAPSHOT_CHUNK:
            for _ in self._steps():
                pass
        else:
            self.task = asyncio.get_running_loop().create_task(self._write())

    def _steps(self):
        """Writes `sse` and `json`, a step at a time (a generator): a chunk
        of rows a step, then the ~3 MB copies one a step."""
        head = f"id: {self.id}\nevent: snapshot\ndata: ".encode()
        obj = encode({"type": "snapshot", "id": self.id, "at": self.wall, "devices": []})[:-2]  # ..."devices":[
        parts = [head + obj.encode()]  # the JSON is ASCII (\u escapes)
        items = iter(self.fields.items())
        while chunk := list(itertools.islice(items, SNAPSHOT_CHUNK)):
            if len(parts) > 1:
                parts.append(b",")
            parts.append(encode([_row(d, f, self.wall) for d, f in chunk])[1:-1].encode())  # without [ ]
            yield
        parts.append(b"]}\n\n")
        self.fields = {}
        sse = b"".join(parts)
        yield
        self.json = str(memoryview(sse)[len(head):-2], "ascii")  # last: it is written
        self.sse = sse

    async def _write(self) -> None:
        try:
            for _ in self._steps():
                await asyncio.sleep(0)
        except Exception as e:  # noqa: BLE001 -- its clients' streams end, the backend goes on
            _warn(f"dashboard snapshot {self.id} could not be written ({type(e).__name__}: {e})")
            self.abandoned = True
        finally:
            self.fields = {}
            for client in self.users:
                client.wake.set()

    def leave(self, client) -> None:
        self.users.discard(client)
        if not self.users and self.json is None and self.task is not None:
            self.abandoned = True
            self.task.cancel()


def _warn(text: str) -> None:
    print(f"esp32emu: warning: {text}", file=sys.stderr, flush=True)
