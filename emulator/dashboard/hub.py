"""The dashboard's event stream, on top of the one per-device model
(emulator/observe/counting.py's FleetObserver).

Every message the observer counts becomes one event with one global,
increasing id, numbered on paho's thread under the observer's lock -- so a
snapshot of the model taken under that lock is exactly "everything up to
id S". Events are encoded once there (JSON for the WebSocket, the SSE frame)
and handed to the event loop in batches (one `call_soon_threadsafe` per
batch, not per message). The hub keeps each device's row fields as of its
last event there too (a tuple): a snapshot copies that dict under the lock
(`open()`, no await: the client is registered with `after = S` in the same
step), and its rows and JSON are written later on the loop a chunk at a
time (`Snapshot`), the client's stream waiting for it with the events after
S queued.

On the loop, `_drain` appends each batch to the replay ring (`history`
events) and hands it to every client's bounded queue (a batch gathers for
BATCH_S first); it never waits on a
client. A client whose queue passes its bound is dropped (its task
cancelled if it is blocked writing): it reconnects with `Last-Event-ID` and
gets the replay from the ring, or `resync` + `snapshot` when its id has
left the ring (or belongs to an earlier run of the backend).

With an event log (`esp32emu dashboard` and `fleet --dashboard` keep one
in the state folder, `<state>/dashboard/events.log`) the ring survives a
restart: `_drain` appends each batch to it (one line of JSON an event,
flushed once a batch, before any client is given the batch), it is
compacted to the ring's events when it holds twice `history` lines, and a
backend that starts reads it back and continues the id sequence from its
last id. A client reconnecting with an id still in the ring then gets a
plain replay (what happened while the backend was down was never
numbered). A truncated or corrupt line is skipped (one warning line), an
unreadable log is one line and an empty ring.

The log is not synced to disk per batch (that would cost a disk flush per
event batch), so a machine crash can lose its tail: ids a client already
saw. A clean stop syncs the log and leaves `events.log.closed` holding its
last id; a backend that starts without that marker (or with one that does
not name the log's last id) takes its ids from the clock as below, above
every id the lost tail could hold, so no id ever names two events. A client
whose id was in the lost tail then gets what comes next, never a resync.

Without a log (or with an empty one) ids start at the backend's start time
in milliseconds times 1000, so a restarted backend's ids are above every id
of the one before: a client that comes back with an id the ring never held
gets `resync`, never someone else's events.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from emulator.dashboard.events import _ROW_FIELDS, Event, Snapshot, _row, _warn, device_row, encode
from emulator.observe.counting import FleetObserver, parse_payload

__all__ = ["Client", "Event", "EventLog", "Hub", "Snapshot", "device_row", "encode"]

DEFAULT_HISTORY = 10_000  # events kept for Last-Event-ID replay
CLIENT_QUEUE = 5_000  # events a client may have waiting before it is dropped
KEEP_TELEMETRY = 60  # per device, for GET /api/devices/{id} (kept as the bytes received: ~8 MB per 1,000 devices)
KEEP_PRESENCE = 50
BATCH_S = 0.005  # events gather this long before they go out (the latency it costs; writes it saves)
SNAPSHOT_REUSE_S = 0.5  # a whole-fleet snapshot serves the clients that connect within this time


class EventLog:
    """The ring on disk: append-only, one event's JSON a line, compacted to
    the ring when it holds `2 * history` lines. Written from the loop only."""

    def __init__(self, path: Path, history: int):
        self.path = Path(path)
        self.history = history
        self.file = None
        self.lines = 0
        self.last_id: int | None = None  # the last id written
        self.marker = self.path.with_name(self.path.name + ".closed")
        self.clean = False  # load(): the log was closed cleanly (its marker names its last id)

    def load(self) -> list[Event]:
        """The last `history` events the log holds (ids increasing), and the
        log rewritten to exactly them, open for appending."""
        events: list[Event] = []
        try:
            closed_at = int(self.marker.read_text(encoding="ascii"))
            self.marker.unlink()
        except (OSError, ValueError):
            closed_at = None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        except (OSError, UnicodeDecodeError) as e:
            _warn(f"dashboard event log {self.path} cannot be read ({getattr(e, 'strerror', None) or e}): "
                  "starting with an empty replay buffer")
            self._rewrite([], quiet=True)  # replaced by an empty log if it can be
            return events
        bad = 0
        for line in text.split("\n"):
            if not line:
                continue
            try:
                ev = Event.from_json(line)
            except ValueError:
                bad += 1
                continue
            if events and ev.id <= events[-1].id:
                bad += 1
                continue
            events.append(ev)
        if bad:
            _warn(f"dashboard event log {self.path}: skipped {bad} line(s) that are not events (truncated?)")
        events = events[-self.history:]
        self.clean = bool(events) and events[-1].id == closed_at
        if events and not self.clean:
            _warn(f"dashboard event log {self.path} was not closed cleanly (its tail may be lost): "
                  "new event ids start from the clock, above any id it held")
        self._rewrite(events)
        return events

    def _rewrite(self, events, quiet: bool = False) -> None:
        self.close()
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(ev.json + "\n" for ev in events))
            os.replace(tmp, self.path)
            self.file = open(self.path, "a", encoding="utf-8")
            self.lines = len(events)
            self.last_id = events[-1].id if events else self.last_id
        except OSError as e:
            if not quiet:
                _warn(f"dashboard event log {self.path} cannot be written ({e.strerror or e}): "
                      "the replay buffer will not survive a restart")
            self.file = None

    def append(self, batch: list[Event], ring) -> None:
        if self.file is None:
            return
        if self.lines + len(batch) > 2 * self.history:
            self._rewrite(ring)  # the ring already holds the batch
            return
        try:
            self.file.write("".join([ev.json + "\n" for ev in batch]))
            self.file.flush()
            self.lines += len(batch)
            self.last_id = batch[-1].id
        except OSError as e:
            _warn(f"dashboard event log {self.path} cannot be written ({e.strerror or e}): stopped writing it")
            self.close()

    def close(self) -> None:
        """Closed and synced; the marker says up to which id it is whole."""
        if self.file is not None:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                if self.last_id is not None:
                    self.marker.write_text(str(self.last_id), encoding="ascii")
            except OSError:
                pass
            self.file = None


class Client:
    """One SSE or WebSocket client: what it wants, its bounded queue."""

    def __init__(self, devices: frozenset[str] | None, after: int, limit: int):
        self.devices = devices  # None: every device
        self.after = after  # events up to this id are already covered (snapshot or replay)
        self.limit = limit
        self.queue: list[Event] = []
        self.wake = asyncio.Event()
        self.dropped = False  # fell behind: the stream ends, the client reconnects
        self.closed = False  # the backend is stopping
        self.sending = False  # blocked writing to the socket (cancel `task` to drop it)
        self.task: asyncio.Task | None = None
        self.snapshot: Snapshot | None = None  # the snapshot it gets first, while it is being written

    def wait_for(self, snap: Event) -> None:
        if isinstance(snap, Snapshot) and snap.json is None:
            self.snapshot = snap
            snap.users.add(self)

    async def ready(self) -> bool:
        """Wait until its snapshot is written (events queue meanwhile): False
        when it was dropped or closed first, or the snapshot could not be written."""
        snap = self.snapshot
        try:
            while snap is not None and snap.json is None and not snap.abandoned and not self.dropped and not self.closed:
                self.wake.clear()
                await self.wake.wait()
            return not self.dropped and not self.closed and (snap is None or snap.json is not None)
        finally:
            self.release()

    def release(self) -> None:
        if self.snapshot is not None:
            self.snapshot.leave(self)
            self.snapshot = None

    def wants(self, ev: Event) -> bool:
        return ev.id > self.after and (self.devices is None or ev.device in self.devices)

    def push(self, events: list[Event]) -> None:
        if self.dropped or not events:
            return
        if len(self.queue) + len(events) > self.limit:
            self.dropped = True
            self.queue = []
            self.wake.set()
            if self.sending and self.task is not None:
                self.task.cancel()
            return
        self.queue.extend(events)
        self.wake.set()

    async def next(self, timeout: float) -> list[Event] | None:
        """The waiting events (empty when dropped; what was queued when closed), None after `timeout` with nothing."""
        if not self.queue and not self.dropped and not self.closed:
            self.wake.clear()
            tick = asyncio.get_running_loop().call_later(timeout, self.wake.set)  # no task per wait (wait_for)
            try:
                await self.wake.wait()
            finally:
                tick.cancel()
            if not self.queue and not self.dropped and not self.closed:
                return None
        events, self.queue = self.queue, []
        return [] if self.dropped else events  # a closed stream still gets what was queued before it closed


class Hub:
    def __init__(self, observer: FleetObserver, history: int = DEFAULT_HISTORY, client_queue: int = CLIENT_QUEUE,
                 log: Path | None = None):
        self.observer = observer
        self.history = history
        self.client_queue = client_queue
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ring: deque[Event] = deque(maxlen=history)
        self.log = None if log is None else EventLog(log, history)
        if self.log is not None:
            self.ring.extend(self.log.load())
        self.clients: set[Client] = set()
        self.waiters: dict[str, asyncio.Future] = {}
        self._pending: list[Event] = []
        self._snap: Snapshot | None = None  # the last whole-fleet snapshot (loop)
        self._snap_at = 0.0
        self._plock = threading.Lock()
        # the log's last id (one sequence across restarts), or above every id of an earlier run
        clock_id = int(time.time() * 1000) * 1000
        self.first_id = self.ring[-1].id if self.log is not None and self.log.clean \
            else max(clock_id, self.ring[-1].id if self.ring else 0)
        self.last_id = self.first_id  # the last id numbered (paho's thread, under the observer's lock)
        self.drained = self.first_id  # the last id in the ring (loop)
        # figures for /metrics
        self.events_total = 0
        self.dropped_total = {"sse": 0, "ws": 0}
        self.connected = {"sse": 0, "ws": 0}
        observer.keep(KEEP_PRESENCE, KEEP_TELEMETRY)
        # Each device's row fields as of its last event (paho's thread, under
        # the observer's lock): a snapshot copies this dict, not the model.
        self._rows: dict[str, tuple] = {}
        with observer.lock:
            self._rows.update((d, _ROW_FIELDS(v)) for d, v in observer.devices.items())
            observer.listeners.append(self._on_message)

    # -- paho's thread ------------------------------------------------------------

    def _on_message(self, kind, device_id, view, body, retained, wall, rtt) -> None:
        """Called by the observer under its lock, after the model took the message."""
        self.last_id += 1
        obj = {"type": kind, "id": self.last_id, "device": device_id, "at": wall, "payload": body}
        if kind != "result":
            fields = self._rows[device_id] = _ROW_FIELDS(view)
        if kind == "status":
            obj["retained"] = retained
            obj["view"] = _row(device_id, fields, wall)
        elif kind == "telemetry":
            obj["received"], obj["lost"] = view.received, view.lost
        else:  # result
            obj["rtt_ms"] = None if rtt is None else round(rtt, 1)
        ev = Event(self.last_id, kind, device_id, obj)
        with self._plock:
            self._pending.append(ev)
            first = len(self._pending) == 1
        if first and self.loop is not None:
            # One wake-up of the loop per batch, and a batch gathers for BATCH_S:
            # at 1,000 msg/s each client gets a few events a write, not one.
            self.loop.call_soon_threadsafe(self.loop.call_later, BATCH_S, self._drain)

    # -- the event loop -------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        loop.call_soon(self._drain)  # what came before the loop ran

    def _drain(self) -> None:
        with self._plock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        self.ring.extend(batch)
        if self.log is not None:  # on disk (flushed) before any client has it
            self.log.append(batch, self.ring)
        self.drained = batch[-1].id
        self.events_total += len(batch)
        if self.waiters:
            for ev in batch:
                if ev.type == "result":
                    self._resolve(ev)
        for client in self.clients:
            if client.devices is None and client.after < batch[0].id:
                client.push(batch)
            else:
                client.push([ev for ev in batch if client.wants(ev)])

    def _resolve(self, ev: Event) -> None:
        body = json.loads(ev.json)
        payload = body.get("payload")
        if isinstance(payload, dict):
            fut = self.waiters.get(str(payload.get("id")))
            if fut is not None and not fut.done():
                fut.set_result(body)

    def _replay(self, after: int, devices: frozenset[str] | None) -> list[Event]:
        return [ev for ev in self.ring if ev.id > after and (devices is None or ev.device in devices)]

    def _fleet_snapshot(self, oldest: int) -> Snapshot:
        """The whole fleet's snapshot, reused for SNAPSHOT_REUSE_S while the
        ring still holds every event after it (they follow it as a replay):
        at 10,000 devices a snapshot is megabytes of JSON, and a hundred
        pages reconnecting at once after a restart must not build a hundred."""
        cached = self._snap
        now = time.monotonic()
        if cached is None or cached.abandoned or now - self._snap_at > SNAPSHOT_REUSE_S or cached.id < oldest - 1:
            cached = self._snap = self.snapshot(None)
            self._snap_at = now
        return cached

    def snapshot(self, devices: frozenset[str] | None = None) -> Snapshot:
        """The snapshot of the model as of event id S (its `id`): the row
        fields copied here (a dict copy: ~1 ms at 10,000 devices), the rows
        and their JSON written later on the loop. Call on the loop."""
        wall = time.time()
        with self.observer.lock:
            sid = self.last_id
            rows = self._rows
            fields = rows.copy() if devices is None else {d: rows[d] for d in devices if d in rows}
        return Snapshot(sid, wall, fields)

    def open(self, devices: frozenset[str] | None, last_event_id: int | None, kind: str) -> tuple[Client, list[Event]]:
        """A new client and what it gets first: the replay after
        `last_event_id`, or (none given, or past the ring) `snapshot`, with
        `resync` before it when an id was given. Runs on the loop, no await:
        nothing can come between the snapshot and the registration. The
        snapshot may still be being written: `await client.ready()` before
        sending `first`."""
        oldest = self.ring[0].id if self.ring else self.drained + 1
        if last_event_id is not None and oldest - 1 <= last_event_id <= self.last_id:
            first = self._replay(last_event_id, devices)
            client = Client(devices, max(last_event_id, self.drained), self.client_queue)
        else:
            if devices is None:  # the whole fleet: one snapshot shared by the clients of the next moment
                snap = self._fleet_snapshot(oldest)
                first = [snap, *self._replay(snap.id, None)]
                sid = max(snap.id, self.drained)
            else:
                snap = self.snapshot(devices)
                first, sid = [snap], snap.id
            if last_event_id is not None:
                why = "from an earlier run of the backend" if last_event_id > self.last_id \
                    or (self.log is None and last_event_id < self.first_id) \
                    else "no longer in the replay buffer"
                rid = first[0].id  # the snapshot's: ids never go backwards within a stream
                first.insert(0, Event(rid, "resync", None, {"type": "resync", "id": rid, "last_event_id": last_event_id,
                                                              "reason": f"event {last_event_id} is {why}"}))
            client = Client(devices, sid, self.client_queue)
            client.wait_for(snap)
        self.clients.add(client)
        self.connected[kind] += 1
        return client, first

    def close(self, client: Client, kind: str) -> None:
        client.release()
        if client in self.clients:
            self.clients.discard(client)
            self.connected[kind] -= 1
            if client.dropped:
                self.dropped_total[kind] += 1

    def _unlisten(self) -> None:
        with self.observer.lock:  # no more events are numbered
            if self._on_message in self.observer.listeners:
                self.observer.listeners.remove(self._on_message)

    def detach(self) -> None:
        """No more events are numbered; the event log is closed."""
        self._unlisten()
        if self.log is not None:
            self.log.close()

    def shutdown(self) -> None:
        """The backend is stopping: no more events are numbered, what is numbered
        goes out, then every stream ends (its clients reconnect to the next one
        with their Last-Event-ID: nothing they were given an id for is lost)."""
        self._unlisten()
        self._drain()
        self.detach()
        for client in self.clients:
            client.closed = True
            client.wake.set()

    # -- commands ---------------------------------------------------------------------

    def seen(self, device_id: str) -> bool:
        with self.observer.lock:
            return device_id in self.observer.devices

    async def command(self, device_id: str, op: str, args: dict, timeout: float, cmd_id: str | None = None) -> tuple[int, dict]:
        """Publish a command and wait for its result: (HTTP status, body):
        200 with the device's result, 504 when none came within `timeout`,
        404 for a device never seen, 409 for an id already waiting."""
        if not self.seen(device_id):
            return 404, {"error": f"device {device_id!r} has never been seen on the broker"}
        cmd_id = cmd_id or uuid.uuid4().hex[:12]
        if cmd_id in self.waiters:
            return 409, {"error": f"a command with id {cmd_id!r} is already waiting for its result"}
        fut = asyncio.get_running_loop().create_future()
        self.waiters[cmd_id] = fut
        t0 = time.monotonic()
        try:
            self.observer.send_command(device_id, op, args, cmd_id)
            try:
                ev = await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                return 504, {"error": f"no result from {device_id} within {timeout:g} s", "device": device_id,
                             "command": cmd_id}
        finally:
            self.waiters.pop(cmd_id, None)
        payload = ev["payload"]
        return 200, {"device": device_id, "command": cmd_id, "ok": payload.get("ok") is True,
                     "result": payload.get("result"), "error": payload.get("error"),
                     "rtt_ms": round((time.monotonic() - t0) * 1000, 1), "event": ev["id"]}

    # -- reading -------------------------------------------------------------------------

    def devices(self) -> list[dict]:
        wall = time.time()
        with self.observer.lock:
            return [device_row(d, v, wall) for d, v in self.observer.devices.items()]

    def device(self, device_id: str) -> dict | None:
        wall = time.time()
        with self.observer.lock:
            v = self.observer.devices.get(device_id)
            if v is None:
                return None
            row = device_row(device_id, v, wall)
            recent = list(v.recent or ())
            row["presence"] = list(v.presence or ())
        row["telemetry"] = [{"at": at, "payload": parse_payload(raw)} for at, raw in recent]
        return row
