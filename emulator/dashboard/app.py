"""The dashboard's ASGI app (Starlette): the endpoints of SPEC §6.

- `GET /` and the page's files: `static/`, no token (the page reads it
  from its own URL and sends it back on every call).
- `GET /api/devices`, `GET /api/devices/{id}`, `GET /api/events` (SSE),
  `POST /api/devices/{id}/commands`, `GET /api/ws` (WebSocket): the token,
  as `Authorization: Bearer <token>` or `?token=` (EventSource and
  WebSocket cannot set headers); 401 without it. A command by GET is 405.
- `GET /metrics`: Prometheus text (counts only, no device strings).

Everything a device sent goes out JSON-encoded (events.encode: also `<`, `>`,
`&` escaped); nothing here renders HTML.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hmac
import json
import logging
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from emulator.dashboard.events import Event, encode
from emulator.dashboard.hub import Client, Hub
from emulator.observe.watch import Rate

STATIC = Path(__file__).resolve().parent / "static"
HEARTBEAT_S = 15.0  # an SSE comment this often when nothing else is sent
RETRY_MS = 2000  # the EventSource's reconnect delay
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0
RTT_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class _DroppedClientLog(logging.Filter):
    """A dropped stream ends without completing its response (its socket
    is closed under it, on purpose), and uvicorn's websockets-sansio calls a
    WebSocket refused with a 401 denial response "returned without
    completing handshake" although the 401 went out: neither is an error
    worth a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "without completing response" not in text and "without completing handshake" not in text


logging.getLogger("uvicorn.error").addFilter(_DroppedClientLog())


def _json(obj, status: int = 200) -> Response:
    return Response(encode(obj), status_code=status, media_type="application/json")


class Auth:
    def __init__(self, token: str):
        self.token = token

    def ok(self, conn: Request | WebSocket) -> bool:
        given = conn.query_params.get("token")
        header = conn.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


def _unauthorized() -> Response:
    return _json({"error": "missing or wrong token (Authorization: Bearer <token>, or ?token=)"}, 401)


def _device_filter(text: str | None) -> frozenset[str] | None:
    if not text or text == "*":
        return None
    return frozenset(d for d in text.split(",") if d)


def _last_event_id(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return -1  # unreadable: treated as unknown (resync)


def command_body(body) -> tuple[str, dict, float, str | None]:
    """(op, args, timeout_s, id) from a command's JSON body; ValueError saying what is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object: {\"op\": ..., \"args\": {...}, \"timeout_s\": ...}")
    op, args = body.get("op"), body.get("args", {})
    if not isinstance(op, str) or not op:
        raise ValueError("\"op\" must be a non-empty string")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError("\"args\" must be a JSON object")
    timeout = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(f"\"timeout_s\" must be a number in (0, {MAX_TIMEOUT_S:g}]")
    cmd_id = body.get("id")
    if cmd_id is not None and (not isinstance(cmd_id, str) or not cmd_id or len(cmd_id) > 64):
        raise ValueError("\"id\" must be a non-empty string of at most 64 characters")
    return op, args, float(timeout), cmd_id


class EventStream:
    """`GET /api/events`: a raw ASGI app, so that a stream can be ended
    while it is blocked writing to a client that stopped reading."""

    def __init__(self, hub: Hub, auth: Auth):
        self.hub, self.auth = hub, auth

    async def __call__(self, scope, receive, send) -> None:
        request = Request(scope)
        if not self.auth.ok(request):
            await _unauthorized()(scope, receive, send)
            return
        devices = _device_filter(request.query_params.get("device"))
        last = _last_event_id(request.headers.get("last-event-id") or request.query_params.get("last_event_id"))
        client, first = self.hub.open(devices, last, "sse")
        client.task = asyncio.current_task()
        watcher = asyncio.create_task(self._disconnect(receive, client))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]})
            if await client.ready():  # its snapshot written (the events after it queue meanwhile)
                await self._write(send, client, f"retry: {RETRY_MS}\n\n".encode() + b"".join(ev.sse for ev in first))
                while True:
                    events = await client.next(HEARTBEAT_S)
                    if client.dropped:
                        break
                    if events or not client.closed:
                        await self._write(send, client, b": heartbeat\n\n" if events is None else b"".join(ev.sse for ev in events))
                    if client.closed:
                        break
            if client.closed and not client.dropped:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not client.dropped:
                raise
            asyncio.current_task().uncancel()  # dropped while blocked writing: the server closes the socket
        finally:
            watcher.cancel()
            self.hub.close(client, "sse")

    @staticmethod
    async def _write(send, client: Client, body: bytes) -> None:
        client.sending = True
        try:
            await send({"type": "http.response.body", "body": body, "more_body": True})
        finally:
            client.sending = False

    @staticmethod
    async def _disconnect(receive, client: Client) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        client.closed = True
        client.wake.set()


class Channel:
    """`GET /api/ws`: one WebSocket client. It sends `subscribe` (devices
    or "*", optionally `last_id` for a replay) and `command`; it gets the
    same event objects as SSE, and for each command a reply
    `{"type": "result", "command", "device", "status", ...}` (no event id:
    a reply, not a stream event)."""

    def __init__(self, hub: Hub, auth: Auth, websocket: WebSocket):
        self.hub, self.auth, self.ws = hub, auth, websocket
        self.client: Client | None = None
        self.writer: asyncio.Task | None = None
        self.lock = asyncio.Lock()
        self.commands: set[asyncio.Task] = set()
        self.task: asyncio.Task | None = None  # run(): the connection
        self.ended = False  # the stream ended on the backend's side: so does the connection

    async def run(self) -> None:
        if not self.auth.ok(self.ws):
            try:
                await self.ws.send_denial_response(_unauthorized())
            except RuntimeError:  # a server without the denial extension
                await self.ws.close(code=4401, reason="missing or wrong token")
            return
        await self.ws.accept()
        self.task = asyncio.current_task()
        try:
            while True:
                try:
                    msg = json.loads(await self.ws.receive_text())
                except ValueError:
                    await self._send({"type": "error", "error": "not JSON"})
                    continue
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "subscribe":
                    self._subscribe(msg)
                elif kind == "command":
                    task = asyncio.create_task(self._command(msg))
                    self.commands.add(task)
                    task.add_done_callback(self.commands.discard)
                else:
                    await self._send({"type": "error", "error": "expected {\"type\": \"subscribe\"} or {\"type\": \"command\"}"})
        except WebSocketDisconnect:
            pass
        except asyncio.CancelledError:
            if not self.ended:
                raise
            self.task.uncancel()  # its stream ended (dropped, or the backend stopping): the server closes it
        finally:
            self._unsubscribe()
            for task in list(self.commands):
                task.cancel()

    async def _send(self, obj_or_text) -> None:
        async with self.lock:
            await self.ws.send_text(obj_or_text if isinstance(obj_or_text, str) else encode(obj_or_text))

    def _subscribe(self, msg: dict) -> None:
        self._unsubscribe()
        wanted = msg.get("devices", "*")
        devices = None if wanted == "*" else frozenset(d for d in wanted if isinstance(d, str)) \
            if isinstance(wanted, list) else frozenset()
        last = msg.get("last_id")
        self.client, first = self.hub.open(devices, last if isinstance(last, int) else None, "ws")
        self.writer = self.client.task = asyncio.create_task(self._write(self.client, first))

    def _unsubscribe(self) -> None:
        if self.client is not None:
            if self.writer is not None:
                self.writer.cancel()
            self.hub.close(self.client, "ws")
            self.client = None

    async def _write(self, client: Client, first: list[Event]) -> None:
        try:
            events: list[Event] | None = first if await client.ready() else []  # dropped or closed: it ends below
            while True:
                if events:
                    client.sending = True
                    async with self.lock:  # once per batch: command replies wait between batches, not events
                        for ev in events:
                            await self.ws.send_text(ev.json)
                    client.sending = False
                if client.closed:
                    break
                events = await client.next(HEARTBEAT_S)
                if client.dropped:
                    break
        except asyncio.CancelledError:
            if not client.dropped:
                raise
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        finally:
            client.sending = False
        self.hub.close(client, "ws")
        try:  # 1013: try again later -- it resubscribes and gets a replay or a resync
            await asyncio.wait_for(self.ws.close(code=1013 if client.dropped else 1001), 1.0)
        except (TimeoutError, RuntimeError, OSError):
            pass
        self.ended = True
        self.client = None
        if self.task is not None:
            self.task.cancel()  # the connection ends with its stream

    async def _command(self, msg: dict) -> None:
        device = msg.get("device")
        reply = {"type": "result", "device": device, "command": msg.get("id")}
        try:
            if not isinstance(device, str) or not device:
                raise ValueError("\"device\" must be a device id")
            op, args, timeout, cmd_id = command_body(msg)
        except ValueError as e:
            await self._send({**reply, "status": 400, "error": str(e)})
            return
        status, body = await self.hub.command(device, op, args, timeout, cmd_id)
        try:
            await self._send({**reply, **body, "status": status})
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client left while its command was out


class Metrics:
    """Prometheus text exposition (format 0.0.4), written here."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.rate = Rate(10.0)
        self.per_second = 0.0

    async def sample(self) -> None:
        """Messages per second, sampled every second (the first scrape has a value too)."""
        while True:
            with self.hub.observer.lock:
                total = self.hub.observer.telemetry_total
            self.per_second = self.rate.update(total)
            await asyncio.sleep(1.0)

    def text(self) -> str:
        obs = self.hub.observer
        with obs.lock:
            states = {"online": 0, "offline": 0, "will": 0, "unknown": 0}
            for v in obs.devices.values():
                states[v.state or "unknown"] += 1
            rtts = sorted(obs.rtts_ms)
        s = obs.summary()
        out = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}"
                       for labels, value in samples)

        metric("esp32emu_devices", "gauge", "Devices seen, by presence state.",
               [(f'{{state="{k}"}}', n) for k, n in states.items()])
        metric("esp32emu_telemetry_received_total", "counter", "Telemetry messages received.",
               [("", s["telemetry_received"])])
        metric("esp32emu_telemetry_lost_total", "counter", "Telemetry messages lost (seq gaps).", [("", s["telemetry_lost"])])
        metric("esp32emu_telemetry_per_second", "gauge", "Telemetry messages per second (last 10 s).",
               [("", round(self.per_second, 1))])
        metric("esp32emu_reconnects_total", "counter", "Device reconnects (births after the first).", [("", s["reconnects"])])
        metric("esp32emu_wills_total", "counter", "Last Wills seen.", [("", s["lwt_seen"])])
        metric("esp32emu_commands_sent_total", "counter", "Commands published.", [("", s["commands_sent"])])
        buckets = [(f'{{le="{b}"}}', bisect.bisect_right(rtts, b)) for b in RTT_BUCKETS_MS]
        buckets.append(('{le="+Inf"}', len(rtts)))
        out.append("# HELP esp32emu_command_rtt_ms Command round trip (publish to result), milliseconds.")
        out.append("# TYPE esp32emu_command_rtt_ms histogram")
        out.extend(f"esp32emu_command_rtt_ms_bucket{labels} {n}" for labels, n in buckets)
        out.append(f"esp32emu_command_rtt_ms_sum {sum(rtts):.1f}")
        out.append(f"esp32emu_command_rtt_ms_count {len(rtts)}")
        metric("esp32emu_events_total", "counter", "Events sent into the stream (SSE and WebSocket).",
               [("", self.hub.events_total)])
        metric("esp32emu_clients", "gauge", "Connected stream clients.",
               [(f'{{transport="{k}"}}', n) for k, n in self.hub.connected.items()])
        metric("esp32emu_clients_dropped_total", "counter", "Clients dropped for falling behind.",
               [(f'{{transport="{k}"}}', n) for k, n in self.hub.dropped_total.items()])
        metric("esp32emu_mqtt_connected", "gauge", "1 when the backend's MQTT connection is up.",
               [("", int(obs.conn.connected))])
        return "\n".join(out) + "\n"


def build_app(hub: Hub, token: str, static_dir: Path = STATIC) -> Starlette:
    auth = Auth(token)
    metrics = Metrics(hub)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            if not auth.ok(request):
                return _unauthorized()
            return await handler(request)

        return endpoint

    async def devices(request: Request) -> Response:
        return _json({"at": time.time(), "devices": hub.devices()})

    async def device(request: Request) -> Response:
        row = hub.device(request.path_params["id"])
        if row is None:
            return _json({"error": f"device {request.path_params['id']!r} has never been seen on the broker"}, 404)
        return _json(row)

    async def command(request: Request) -> Response:
        if request.method != "POST":  # never by GET (a link, a prefetch, an <img> could send it)
            out = _json({"error": "commands are sent by POST"}, 405)
            out.headers["allow"] = "POST"
            return out
        if not auth.ok(request):
            return _unauthorized()
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _json({"error": "the body is not JSON"}, 400)
        try:
            op, args, timeout, cmd_id = command_body(body)
        except ValueError as e:
            return _json({"error": str(e)}, 400)
        status, out = await hub.command(request.path_params["id"], op, args, timeout, cmd_id)
        return _json(out, status)

    async def ws(websocket: WebSocket) -> None:
        await Channel(hub, auth, websocket).run()

    async def prometheus(request: Request) -> Response:
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        hub.bind(asyncio.get_running_loop())
        sampler = asyncio.create_task(metrics.sample())
        yield
        sampler.cancel()
        hub.shutdown()

    routes = [
        Route("/api/devices", guarded(devices), methods=["GET"]),
        Route("/api/devices/{id}", guarded(device), methods=["GET"]),
        # every method, so that a GET is answered 405 here rather than 404 by the static files
        Route("/api/devices/{id}/commands", command, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
        Route("/api/events", EventStream(hub, auth), methods=["GET"]),
        WebSocketRoute("/api/ws", ws),
        Route("/metrics", prometheus, methods=["GET"]),
        Mount("/", StaticFiles(directory=static_dir, html=True), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
