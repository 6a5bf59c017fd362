"""The browser layer (SPEC §6): `esp32emu dashboard` and `fleet --dashboard`.
`hub.py` (the event stream: one global event id, the replay ring, the
per-client bounded queues, command waiters), `events.py` (what the streams
send, as bytes: an event, a device's row, the snapshot written a chunk at
a time), `app.py` (the Starlette ASGI
app: REST, SSE, WebSocket, /metrics, the static page), `server.py` (uvicorn
on a loopback port in a thread of its own, the token, the command),
`static/` (the page, shipped in the wheel).

Built on the one per-device model (emulator/observe/counting.py), so the
dashboard, `fleet` and `watch` never disagree. May import emulator.observe,
emulator.broker and the base modules; never boards, emulator.run, .fleet or
the CLI.
"""
