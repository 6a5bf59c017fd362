# The thin asyncio shell around mqtt_session.Session: it opens the TCP (or
# TLS) stream, moves bytes between the stream and the session, and runs the
# session's timers. It knows nothing about topics or the device.
#
# Reading: each connection has ONE reader task, started by connect(), that
# reads straight into the session's receive buffer (fixed capacity,
# allocated once: readinto a memoryview of its free part) and hands the
# session's events to the owner. A timeout never cancels it: on MicroPython
# a read cancelled by wait_for can lose the bytes that arrive as the timeout
# fires (micropython/micropython#17351). It ends when the link closes or
# fails, or when close() cancels it.
#
# Backpressure: the reader reads only when the session has parsed all it
# can (session.stopped == 0: the next packet is incomplete). While the next
# is a PUBLISH the owner holds (hold(True): its command queue is full), or
# the session's output has no room, it waits for hold(False), or for the
# writer, instead of reading: a read could wait for bytes that never come
# (the broker may have sent everything, its PUBACKs stuck behind the held
# PUBLISH), and TCP flow control holds the broker back. The owner must
# release the hold promptly (its worker runs on the same loop): a PINGRESP
# behind a held PUBLISH is not read either.
#
# Deadlines (CONNACK, keepalive PINGREQ/PINGRESP, a started packet, a SUBACK,
# a stalled write) are kept by the session's clock in a timer loop that runs
# in the caller's task (connect, subscribe_and_wait, pump): it sleeps until
# the next deadline, or until the reader wakes it with news, and runs the
# session's timers. Writes from the owner and the timer loop have their own
# deadline; the reader's (PUBACKs) are not wrapped in a timeout: the timer
# loop fails a write stuck for _WRITE_TIMEOUT_MS when it next wakes (at the
# latest by the next keepalive deadline). It never retries on its own;
# reconnecting is the device supervisor's job. One timer loop at a time.
import asyncio
import time

from mqtt_codec import ProtocolError
import mqtt_session

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_WRITE_TIMEOUT_MS = const(10000)


async def wait_for_ms(aw, timeout_ms):
    # asyncio.wait_for_ms(aw, timeout_ms) without loading asyncio.funcs (0.8
    # KiB of heap for good) and with one task instead of two and a closure:
    # aw runs in this task; an alarm task cancels it at the deadline, which
    # raises asyncio.TimeoutError here.
    task = asyncio.current_task()
    assert task is not None  # (always, in a coroutine run by asyncio)
    alarm = asyncio.create_task(_after(timeout_ms, task.cancel))
    try:
        return await aw
    except asyncio.CancelledError:
        if alarm.done():
            raise asyncio.TimeoutError
        raise
    finally:
        alarm.cancel()


async def _after(ms, f):
    # An alarm's task: f() (a task's cancel, an Event's set) in ms.
    await asyncio.sleep_ms(ms)
    f()


class LinkError(Exception):
    # The link to the broker failed or the broker refused us; `str()` says why.
    pass


class MqttClient:
    def __init__(self, session, on_event):
        # on_event(ev) is called (from the reader task or the timer loop) for
        # every session event (a tuple) except link dead and connection refused, which end
        # connect()/pump() with a LinkError. It must not block or raise.
        self.session = session
        self._on_event = on_event
        self._reader = None
        self._writer = None
        self._task = None  # the current connection's reader task
        self._link = 0  # counts connections opened and closed
        self._writing = False  # a _send() is writing (one at a time)
        self._wake = asyncio.Event()  # the reader has news for the timer loop
        # Set by hold(False) and when a writer is done: a task waiting for
        # either (the reader, a caller of _send()) looks again.
        self._resume = asyncio.Event()
        self._due = time.ticks_ms()  # ticks when the timer loop plans to wake
        self._tx_since = None  # ticks when the write in progress started
        self._failure = None  # why the link is unusable
        self._suback_pid = 0  # SUBACK awaited by subscribe_and_wait()
        self._suback = None  # its return codes once it came
        self._peer = ""  # "host:port" of the last connect(), for errors

    # -- connection ---------------------------------------------------------

    async def connect(self, host, port, ssl=None, server_hostname=None, timeout_ms=10000):
        # Open the stream (getaddrinfo runs on every call: DNS is never
        # cached), send CONNECT and wait for CONNACK, all within timeout_ms.
        session = self.session
        start = time.ticks_ms()
        self._peer = "%s:%d" % (host, port)
        try:
            if ssl is None:
                coro = asyncio.open_connection(host, port)
            else:
                coro = asyncio.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)
            self._reader, self._writer = await wait_for_ms(coro, timeout_ms)
        except asyncio.TimeoutError:
            raise LinkError("connect to %s:%d timed out after %d ms" % (host, port, timeout_ms))
        except OSError as e:
            raise LinkError(self._oserror("connect to " + self._peer, e))
        self._link += 1
        self._failure = None
        self._tx_since = None
        now = time.ticks_ms()
        self._due = now
        session.start(now)
        self._task = asyncio.create_task(self._read_loop(self._reader))
        try:
            await self._flush()
            await self._serve(1, start, timeout_ms, "CONNACK")
            # Anything that was queued while offline goes out now.
            await self._flush()
        except LinkError:
            await self.close()
            raise

    @property
    def connected(self):
        return self.session.state == mqtt_session.CONNECTED

    async def close(self):
        # Stop the reader and close the socket (FIN); safe to call twice.
        w = self._writer
        task = self._task
        self._reader = self._writer = self._task = None
        self._link += 1
        self._fail("connection closed")  # a timer loop still running ends
        if task is not None:
            task.cancel()
        if self.session.state != mqtt_session.DISCONNECTED:
            self.session.connection_lost(time.ticks_ms())
        if w is not None:
            try:
                w.close()
                await wait_for_ms(w.wait_closed(), 1000)
            except Exception:
                pass

    async def disconnect(self):
        # Planned goodbye: DISCONNECT (the broker discards our Will), then FIN.
        if self.connected:
            try:
                if not self.session.writable():
                    await self._send()
                if self.connected:
                    self.session.disconnect(time.ticks_ms())
                    await self._flush()
            except LinkError:
                pass
        await self.close()

    # -- reading and the timers ---------------------------------------------

    async def pump(self):
        # Run the timers until the link fails; raises LinkError saying why.
        try:
            await self._serve(0, 0, 0, "")
        finally:
            await self.close()

    async def _read_loop(self, reader):
        # The connection's only reader. Never cancelled by a timeout.
        session = self.session
        resume = self._resume
        try:
            while True:
                self._dispatch()  # parses what the session may parse now
                if self._failure is not None:
                    return
                if session.has_data_to_send() and not self._writing:
                    await self._send()  # PUBACKs (a writer at work sends them too); the timer loop watches the write
                    continue
                if session.stopped:  # a held PUBLISH, or no output room while a writer is at work
                    resume.clear()
                    await resume.wait()
                    continue
                # (never empty here: a packet too big for the buffer is a
                # PUBLISH read into its own payload, or a ProtocolError)
                n = await reader.readinto(session.decoder.space())
                if n is None:  # TLS: only part of a record came, nothing decrypted yet
                    continue
                if not n:
                    self._fail("broker closed the connection")
                    return
                now = time.ticks_ms()
                session.received(n, now)
                self._dispatch()
                # A deadline that came closer (a packet started) wakes the
                # timer loop; otherwise it sleeps on.
                if session.next_timeout_ms(now) < time.ticks_diff(self._due, now):
                    self._wake.set()
        except OSError as e:
            self._fail(self._oserror("read", e))
        except LinkError as e:
            self._fail(str(e))
        except Exception as e:  # a bug must end the link, not leave it unread
            self._fail("reader failed: %r" % (e,))

    async def _serve(self, until, start, limit_ms, what):
        # The timer loop: run the session's timers and send what they queue,
        # then sleep until the next deadline or until the reader has news.
        # Returns once `until` happened (1: the CONNACK came, 2: the awaited
        # SUBACK came, 0: never); raises LinkError when the link fails, or
        # when `what` did not happen within limit_ms of start (0: no limit).
        session = self.session
        wake = self._wake
        while True:
            wake.clear()
            now = time.ticks_ms()
            session.tick(now)
            self._dispatch()
            tx = self._tx_since
            if tx is not None and time.ticks_diff(now, tx) >= _WRITE_TIMEOUT_MS:
                self._fail("write stalled for %d ms" % _WRITE_TIMEOUT_MS)
            if self._failure is not None:
                raise LinkError(self._failure)
            if (until == 1 and session.state != mqtt_session.CONNECTING) or (until == 2 and self._suback is not None):
                return
            left = session.next_timeout_ms(now)
            if tx is not None:
                left = min(left, _WRITE_TIMEOUT_MS - time.ticks_diff(now, tx))
            if limit_ms:
                rest = limit_ms - time.ticks_diff(now, start)
                if rest <= 0:
                    raise LinkError("no %s within %d ms" % (what, limit_ms))
                left = min(left, rest)
            if session.has_data_to_send() and self._writer is not None and not self._writing:
                await self._flush()  # a PINGREQ (a writer at work sends it too)
                continue
            left = max(left, 1)
            self._due = time.ticks_add(now, left)
            # Sleep until the reader's news or the deadline (the alarm sets
            # wake then): one task, where asyncio.wait_for_ms on the Event
            # kept two and a closure alive the whole time.
            alarm = asyncio.create_task(_after(left, wake.set))
            try:
                await wake.wait()
            finally:
                alarm.cancel()

    def _dispatch(self):
        while self._failure is None:
            try:
                ev = self.session.next_event()
            except ProtocolError as e:
                self._fail("protocol error from broker: %s" % e)
                return
            if ev is None:
                return
            k = ev[0]  # the kinds: mqtt_session's "events"
            if k == 17:  # link dead
                self._fail(ev[1])
            elif k == 16:  # connection refused
                self._fail("broker refused CONNECT: %s (code %d)" % (ev[2], ev[1]))
            else:
                if k == 2:  # connected
                    self._wake.set()
                elif k == 9 and ev[1] == self._suback_pid:  # subscribed
                    self._suback = ev[2]
                    self._wake.set()
                self._on_event(ev)

    def _oserror(self, what, e):
        # "<what> failed: ..." for a socket error. Before CONNACK a reset is a
        # refusal: ESP32 raises ECONNRESET (104) for it (at connect or the first
        # read/write), Linux ECONNREFUSED (111).
        n = e.args[0] if e.args and isinstance(e.args[0], int) else None
        if n == 104 or n == 111:
            if self.session.state != mqtt_session.CONNECTED:
                return "connection refused by " + self._peer
            return what + " failed: connection reset"
        return "%s failed: %s" % (what, repr(e) if n is None else "OSError %d" % n)

    def _fail(self, reason):
        if self._failure is None:
            self._failure = reason
        self._wake.set()

    # -- writing --------------------------------------------------------------

    def _flush(self):
        # Send what the session queued, within _WRITE_TIMEOUT_MS, or
        # LinkError: _send's own coroutine (one frame less a publish).
        return self._send(time.ticks_ms())

    async def _send(self, start=None):
        # One writer at a time (one drain at a time per stream), writing and
        # draining until the session has nothing more queued: bytes leave in
        # the order queued. Another caller waits until it is done (a flag and
        # the _resume Event: asyncio.Lock's module costs heap; callers that
        # need not wait check _writing first).
        # With `start` (ticks; _flush): nothing to do if nothing is queued,
        # else all done within _WRITE_TIMEOUT_MS of it, or LinkError. The
        # deadline (wait_for_ms: a Task and a frame) is armed only for a
        # wait: another writer at work, or bytes the socket did not take at
        # write() (asyncio's Stream keeps them in out_buf; its drain() then
        # only yields). A publish that fits the socket's buffer, nearly all
        # of them, allocates no alarm.
        if start is not None and (self._writer is None or not self.session.has_data_to_send()):
            return
        try:
            if start is not None and self._writing:
                return await wait_for_ms(self._send(), _WRITE_TIMEOUT_MS - time.ticks_diff(time.ticks_ms(), start))
            resume = self._resume
            while self._writing:
                resume.clear()
                await resume.wait()
            w = self._writer
            if w is None:
                return
            link = self._link
            self._writing = True
            try:
                while True:
                    # the session's own buffer, unchanged until the next call (made
                    # only here, by the one writer, after this drain): no copy
                    data = self.session.data_to_send()
                    if not data or link != self._link:  # nothing left, or closed meanwhile
                        return
                    self._tx_since = time.ticks_ms()
                    try:
                        w.write(data)
                        if start is not None and getattr(w, "out_buf", True):
                            await wait_for_ms(w.drain(), _WRITE_TIMEOUT_MS - time.ticks_diff(time.ticks_ms(), start))
                        else:
                            await w.drain()
                    except OSError as e:
                        raise LinkError(self._oserror("write", e))
                    finally:
                        self._tx_since = None
            finally:
                self._writing = False
                self._resume.set()
        except asyncio.TimeoutError:  # (only with start)
            raise LinkError("write stalled for %d ms" % _WRITE_TIMEOUT_MS)

    # -- for the owner --------------------------------------------------------

    async def publish(self, topic, payload, qos=0, retain=False):
        # QoS 0: sent now if connected, else dropped (returns 0).
        # QoS 1: returns the packet id; it goes out as the session's window
        # allows, survives reconnects and is resent with DUP until acknowledged.
        if qos == 0:
            if not self.session.writable():
                await self._send()  # all that fills the output (or the link closed)
            if not self.connected:
                return 0
            self.session.publish(topic, payload, 0, retain, time.ticks_ms())
            await self._flush()
            return 0
        if self.session.inflight_count() >= mqtt_session.MAX_INFLIGHT:
            raise LinkError("too many QoS 1 messages queued (%d)" % mqtt_session.MAX_INFLIGHT)
        pid = self.session.publish(topic, payload, 1, retain, time.ticks_ms())
        if self.connected:
            await self._flush()
        return pid

    def hold(self, on):
        # Stop (True) or resume (False) taking PUBLISHes: while held, the
        # reader stops at the next one and reads no further (backpressure).
        self.session.hold = on
        if not on:
            self._resume.set()

    async def subscribe_and_wait(self, topics, timeout_ms):
        # Subscribe and wait for the SUBACK (running the timers meanwhile);
        # returns its return codes, one per topic (0x80 = refused). LinkError
        # if the link fails or no SUBACK comes within timeout_ms.
        start = time.ticks_ms()
        if not self.connected:
            raise LinkError(self._failure or "not connected")
        self._suback = None
        if not self.session.writable():
            await self._send()
            if not self.connected:
                raise LinkError(self._failure or "not connected")
        # Known before the SUBSCRIBE leaves: the reader may get the SUBACK
        # while this task is still in the write.
        self._suback_pid = self.session.subscribe(topics, start)
        try:
            await self._flush()
            await self._serve(2, start, timeout_ms, "SUBACK")
        finally:
            self._suback_pid = 0
        codes = self._suback
        self._suback = None
        return codes

    def pending(self):
        # QoS 1 messages not yet acknowledged (in flight + queued).
        return self.session.inflight_count()
