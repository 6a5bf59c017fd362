# The thin asyncio shell around mqtt_session.Session: it opens the TCP (or
# TLS) stream, moves bytes between the stream and the session, and runs the
# session's timers. It knows nothing about topics or the device.
#
# Every wait has a deadline: the connect, the CONNACK, every write, and every
# read (bounded by the session's next timer). It never retries on its own;
# reconnecting is the device supervisor's job.
import asyncio
import time

from mqtt_codec import ProtocolError
import mqtt_session
from mqtt_session import ConnectionRefused, LinkDead, PublishAcked

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_READ_CHUNK = const(1024)
_WRITE_TIMEOUT_MS = const(10000)
_WINDOW = const(8)  # QoS 1 messages handed to the session at once
_MAX_QUEUED = const(64)  # QoS 1 messages waiting for a window slot


class LinkError(Exception):
    # The link to the broker failed or the broker refused us; `str()` says why.
    pass


class MqttClient:
    def __init__(self, session, on_event):
        # on_event(ev) is called for every session event except LinkDead and
        # ConnectionRefused, which end connect()/pump() with a LinkError.
        self.session = session
        self._on_event = on_event
        self._reader = None
        self._writer = None
        self._wlock = asyncio.Lock()
        self._queued = []  # QoS 1 publishes waiting for a window slot
        self._failure = None  # why the link is unusable, set by _read_once

    # -- connection ---------------------------------------------------------

    async def connect(self, host, port, ssl=None, server_hostname=None, timeout_ms=10000):
        # Open the stream (getaddrinfo runs on every call: DNS is never
        # cached), send CONNECT and wait for CONNACK, all within timeout_ms.
        session = self.session
        start = time.ticks_ms()
        try:
            if ssl is None:
                coro = asyncio.open_connection(host, port)
            else:
                coro = asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)
            self._reader, self._writer = await asyncio.wait_for_ms(coro, timeout_ms)
        except asyncio.TimeoutError:
            raise LinkError("connect to %s:%d timed out after %d ms" % (host, port, timeout_ms))
        except OSError as e:
            raise LinkError("connect to %s:%d failed: %s" % (host, port, _oserror(e)))
        self._failure = None
        session.start(time.ticks_ms())
        try:
            await self._flush()
            while session.state == mqtt_session.CONNECTING:
                left = timeout_ms - time.ticks_diff(time.ticks_ms(), start)
                if left <= 0:
                    raise LinkError("no CONNACK within %d ms" % timeout_ms)
                await self._read_once(left)
                if self._failure is not None:
                    raise LinkError(self._failure)
        except LinkError:
            await self.close()
            raise
        # Anything that was queued while offline goes out now.
        self._feed_window()
        await self._flush()

    @property
    def connected(self):
        return self.session.state == mqtt_session.CONNECTED

    async def close(self):
        # Close the socket (FIN); safe to call twice.
        w = self._writer
        self._reader = self._writer = None
        if self.session.state != mqtt_session.DISCONNECTED:
            self.session.connection_lost(time.ticks_ms())
        if w is not None:
            try:
                w.close()
                await asyncio.wait_for_ms(w.wait_closed(), 1000)
            except Exception:
                pass

    async def disconnect(self):
        # Planned goodbye: DISCONNECT (the broker discards our Will), then FIN.
        if self.connected:
            self.session.disconnect(time.ticks_ms())
            try:
                await self._flush()
            except LinkError:
                pass
        await self.close()

    # -- the pump -----------------------------------------------------------

    async def pump(self):
        # Read and run timers until the link fails; raises LinkError saying why.
        # Events for the owner are collected and the owner is woken.
        try:
            while self._reader is not None:
                timeout = self.session.next_timeout_ms(time.ticks_ms())
                await self._read_once(max(timeout, 1))
                if self._failure is not None:
                    raise LinkError(self._failure)
            raise LinkError("link closed")
        finally:
            await self.close()

    async def _read_once(self, timeout_ms):
        session = self.session
        reader = self._reader
        if reader is None:
            raise LinkError("not connected")
        try:
            data = await asyncio.wait_for_ms(reader.read(_READ_CHUNK), timeout_ms)
        except asyncio.TimeoutError:
            data = None
        except OSError as e:
            raise LinkError("read failed: %s" % _oserror(e))
        now = time.ticks_ms()
        if data is not None:
            if not data:
                raise LinkError("broker closed the connection")
            try:
                session.receive_data(data, now)
            except ProtocolError as e:
                raise LinkError("protocol error from broker: %s" % e)
        session.tick(time.ticks_ms())
        while True:
            ev = session.next_event()
            if ev is None:
                break
            if isinstance(ev, LinkDead):
                self._failure = ev.reason
            elif isinstance(ev, ConnectionRefused):
                self._failure = "broker refused CONNECT: %s (code %d)" % (ev.reason, ev.return_code)
            else:
                if isinstance(ev, PublishAcked):
                    self._feed_window()
                self._on_event(ev)
        await self._flush()

    async def _flush(self):
        data = self.session.data_to_send()
        if not data:
            return
        w = self._writer
        if w is None:
            return
        async with self._wlock:
            try:
                w.write(data)
                await asyncio.wait_for_ms(w.drain(), _WRITE_TIMEOUT_MS)
            except asyncio.TimeoutError:
                raise LinkError("write stalled for %d ms" % _WRITE_TIMEOUT_MS)
            except OSError as e:
                raise LinkError("write failed: %s" % _oserror(e))

    # -- for the owner --------------------------------------------------------

    async def publish(self, topic, payload, qos=0, retain=False):
        # QoS 0: sent now if connected, else dropped (returns 0).
        # QoS 1: returns the packet id, or -1 while it waits for a window slot;
        # it survives reconnects and is resent with DUP until acknowledged.
        now = time.ticks_ms()
        if qos == 0:
            if not self.connected:
                return 0
            self.session.publish(topic, payload, 0, retain, now)
            await self._flush()
            return 0
        if self.session.inflight_count() >= _WINDOW:
            if len(self._queued) >= _MAX_QUEUED:
                raise LinkError("too many QoS 1 messages queued (%d)" % _MAX_QUEUED)
            self._queued.append((topic, payload, retain))
            return -1
        pid = self.session.publish(topic, payload, 1, retain, now)
        if self.connected:
            await self._flush()
        return pid

    def _feed_window(self):
        q = self._queued
        while q and self.session.inflight_count() < _WINDOW:
            topic, payload, retain = q.pop(0)
            self.session.publish(topic, payload, 1, retain, time.ticks_ms())

    async def subscribe(self, topics):
        pid = self.session.subscribe(topics, time.ticks_ms())
        await self._flush()
        return pid

    def pending(self):
        # QoS 1 messages not yet acknowledged (in flight + queued).
        return self.session.inflight_count() + len(self._queued)


def _oserror(e):
    if e.args and isinstance(e.args[0], int):
        return "OSError %d" % e.args[0]
    return repr(e)
