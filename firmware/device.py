# The device application: Last Will and retained birth, QoS 0 telemetry with
# a sequence number, the QoS 1 command subscription and its results, and the
# supervisor that keeps WiFi and MQTT up with jittered exponential backoff.
#
# Hardware is reached through the modules the board provides (machine, esp32,
# gc, network); everything device-specific lives in the Device object, never
# in module globals.
#
# Heap: code loaded from .mpy lives in the board's heap and every function
# costs ~100 B beyond its bytecode (and every coroutine a frame while it
# runs), so helpers with one caller are written inline.
import asyncio
import gc
import random
import time

import machine
import network

import commands
import mqtt_session
from mqtt_client import LinkError, MqttClient, wait_for_ms
from sensors import Sensors

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


FW_VERSION = "0.1.0"
_UNIX_2000 = const(946684800)  # seconds from 1970-01-01 to the ESP32 epoch 2000-01-01
_WIFI_TIMEOUT_MS = const(15000)
_CHORE_MS = const(1000)  # _chores: how often WiFi is checked; the BOOT button's latency
_CONNECT_TIMEOUT_MS = const(10000)
_SUBACK_TIMEOUT_MS = const(10000)
_SUBACK_FAILURE = const(0x80)
_OFFLINE_ACK_MS = const(2000)
_STABLE_MS = const(10000)  # a link that lived this long resets the backoff
_LOSS_WINDOW_MS = const(8000)  # jitter window for the first retry after a lost link
_RESULT_BACKLOG = const(32)
_LED_PIN = const(2)
_CMD_QUEUE = const(16)  # commands waiting for the worker, at most; more get "busy"
_CMD_HOLD = const(8)  # with this many waiting the reader holds (the rest: slack while it must read on)
_CMD_LOW = const(4)  # the worker lets the reader go on at this many
_BUSY_WINDOW = const(8)  # unacked QoS 1 messages beyond which "busy" goes QoS 0
_BUTTON_PIN = const(0)  # BOOT button on dev kits: press for a planned shutdown
_STAT_IDLE = const(1000)  # network.WLAN.status() on an ESP32
_STAT_CONNECTING = const(1001)
_STAT_GOT_IP = const(1010)


def next_due(due, period, now):
    # The deadline after `due` on a fixed-rate schedule: a late wake keeps
    # the cadence (and a fleet of boards keeps its spread instead of bunching
    # up behind a busy moment); more than a period behind, restart from now
    # (ticks: the caller's clock read, which it also sleeps from).
    due = time.ticks_add(due, period)
    if time.ticks_diff(now, due) >= period:
        return time.ticks_add(now, period)
    return due


def unix_time():
    # Unix seconds, or None while the clock has not been set (RTC still in 2000).
    t = time.time()
    if t < 700000000:  # before 2022: never synced
        return None
    return t + _UNIX_2000


class Device:
    def __init__(self, cfg, device_id, boot, reset, log=print):
        self.cfg = cfg
        self.id = device_id
        self.boot = boot
        self.reset = reset
        self.log = log
        prefix = cfg["prefix"]
        self.t_status = "%s/%s/status" % (prefix, device_id)
        self.t_telemetry = "%s/%s/telemetry" % (prefix, device_id)
        self.t_cmd = "%s/%s/cmd" % (prefix, device_id)
        self.t_result = self.t_cmd + "/result"
        self.interval_ms = int(cfg["interval"] * 1000)
        self.seq = 0
        self.reconnects = 0
        self.started = time.ticks_ms()
        self._sta = network.WLAN(network.STA_IF)  # the WiFi station
        broker = cfg["broker"]
        pw = broker.get("password")
        session = mqtt_session.Session(
            device_id,
            cfg["keepalive"],
            clean_session=True,
            will=(self.t_status, b'{"online":false}', 1, True),
            username=broker.get("username"),
            password=pw.encode() if pw else None,
            # the largest command whole (topic, packet id, payload); bigger: refused unread
            max_packet=commands.MAX_PAYLOAD + 4 + len(self.t_cmd.encode()),
        )
        self.client = MqttClient(session, self._on_event)
        self.results = commands.new_cache()
        self._busy = {}  # id of a command queued or running -> redeliveries seen since
        self._cmds = []  # (cmd_id, op, args) waiting for the worker, at most _CMD_QUEUE
        self._cmd_ready = asyncio.Event()
        self._stalled = False  # the worker waits for PUBACKs: the reader must not hold
        self._telemetry = None  # the telemetry task while it sleeps (set_interval wakes it)
        self._online = asyncio.Event()
        self._acked = asyncio.Event()
        self._leaving = False
        self._wifi_lost = False
        self._pump = None  # the client's pump task while online (WiFi watched)
        self._birth_pid = 0
        self._led = None
        self.sensors = Sensors(cfg["sensors"], log)

    # -- entry: the connection supervisor ---------------------------------------

    async def run(self):
        # Starts the other tasks, then keeps WiFi and MQTT up until a planned
        # shutdown (the supervisor runs in the caller's task: one frame less).
        asyncio.create_task(self._chores())
        asyncio.create_task(self._telemetry_loop())
        asyncio.create_task(self._command_worker())
        bk = self.cfg["backoff"]
        base, cap = bk["base_ms"], bk["cap_ms"]
        window = mqtt_session.backoff_window
        attempt = 0  # reconnect attempts since the backoff was reset
        while not self._leaving:
            reason = await self._connect_once()
            if reason is None:
                up_since = time.ticks_ms()
                # Online: run the client's pump until the link fails or WiFi
                # goes away (a socket over a lost WiFi can stay silent for
                # minutes).
                pump = asyncio.create_task(self.client.pump())
                self._wifi_lost = False
                self._pump = pump  # watched by _chores
                try:
                    await pump
                    reason = "link closed"
                except LinkError as e:
                    reason = str(e)
                except asyncio.CancelledError:
                    if not self._wifi_lost:
                        raise
                    await self.client.close()
                    reason = "wifi lost"
                finally:
                    self._pump = None
                self._online.clear()
                if self._leaving:
                    return
                self.reconnects += 1
                lived = time.ticks_diff(time.ticks_ms(), up_since)
                self.log("mqtt: link lost after %d ms: %s" % (lived, reason))
                # Spread the first retry of a whole fleet over a window: a
                # broker restart must not see every board at once. A link
                # that died young keeps escalating instead. The floor: the
                # first attempt whose window reaches _LOSS_WINDOW_MS (or the cap).
                floor = 0
                while window(base, cap, floor) < _LOSS_WINDOW_MS and window(base, cap, floor + 1) > window(base, cap, floor):
                    floor += 1
                if lived >= _STABLE_MS or attempt < floor:
                    attempt = floor
            # Full jitter: uniform in [0, window].
            delay = random.getrandbits(30) % (window(base, cap, attempt) + 1)
            attempt += 1
            self.log("mqtt: %s; retry %d in %d ms" % (reason, attempt, delay))
            await asyncio.sleep_ms(delay)

    async def _connect_once(self):
        # One attempt: WiFi, then TCP+MQTT, then subscribe (waiting for the
        # SUBACK) and birth.
        # Returns None when online, else the reason it failed.
        sta = self._sta
        if not sta.isconnected():
            self.log("wifi: connecting")
            # Activate, associate, wait for an IP with a deadline. The driver
            # retries association by itself; a wrong password sticks at 202
            # until we disconnect, so every failed attempt ends with
            # disconnect().
            if not sta.active():
                sta.active(True)
            if not sta.isconnected():
                if sta.status() != _STAT_CONNECTING:
                    wifi = self.cfg["wifi"]
                    sta.connect(wifi["ssid"], wifi["password"])
                start = time.ticks_ms()
                status = sta.status()
                while time.ticks_diff(time.ticks_ms(), start) < _WIFI_TIMEOUT_MS and not sta.isconnected():
                    status = sta.status()
                    if status not in (_STAT_IDLE, _STAT_CONNECTING, _STAT_GOT_IP):
                        break
                    await asyncio.sleep_ms(100)
                if not sta.isconnected():
                    sta.disconnect()
                    if status in (_STAT_IDLE, _STAT_CONNECTING):
                        return "wifi: no IP within %d ms" % _WIFI_TIMEOUT_MS
                    # the ESP32's failure codes 200..204 of WLAN.status(), in words
                    if isinstance(status, int) and 200 <= status <= 204:
                        return "wifi: " + ("beacon timeout", "no AP found", "wrong password", "association failed",
                                           "handshake timeout")[status - 200]
                    return "wifi: status %s" % status
            self.log("wifi: connected, ip %s" % sta.ifconfig()[0])
            self._set_clock()
        broker = self.cfg["broker"]
        # An unacknowledged birth from the last link must not be resent ahead
        # of the new SUBSCRIBE: a backend that sees a birth may send commands.
        if self._birth_pid > 0:
            self.client.session.withdraw(self._birth_pid)
            self._birth_pid = 0
        ctx = None
        if broker["tls"]:
            # Mutual TLS: certificates are checked against the RTC, so the
            # clock is set first; never fall back to plaintext.
            import tlsctx

            if not tlsctx.clock_ok():
                self._set_clock()
                if not tlsctx.clock_ok():
                    return "tls: clock not set (NTP needed before certificates can be checked)"
            try:
                ctx = tlsctx.client_context()
            except tlsctx.TlsSetupError as e:
                return str(e)
        try:
            await self.client.connect(
                broker["host"],
                broker["port"],
                ssl=ctx,
                server_hostname=broker["host"] if ctx is not None else None,
                timeout_ms=_CONNECT_TIMEOUT_MS,
            )
            # The birth says "commandable": only once the broker has granted
            # the command subscription (an ACL may refuse it with 0x80).
            codes = await self.client.subscribe_and_wait([(self.t_cmd, 1)], _SUBACK_TIMEOUT_MS)
            if codes[0] == _SUBACK_FAILURE:
                self.log("mqtt: broker refused the command subscription (SUBACK 0x80)")
                await self.client.close()
                return "command subscription refused"
            birth = commands.dumps({"online": True, "fw": FW_VERSION, "boot": self.boot, "reset": self.reset,
                            "ip": sta.ifconfig()[0]})
            self._birth_pid = await self.client.publish(self.t_status, birth, 1, True)
        except LinkError as e:
            await self.client.close()
            return str(e)
        except ValueError as e:
            # MicroPython's mbedTLS raises ValueError (with mbedTLS's reason)
            # when the server's certificate fails verification.
            await self.client.close()
            return "tls: server certificate rejected: %s" % e
        self.log("mqtt: online at %s:%d" % (broker["host"], broker["port"]))
        self._online.set()
        return None

    def _set_clock(self):
        # Real boards need NTP before TLS can verify certificates and before
        # telemetry can carry a timestamp. A failure only costs the timestamp.
        ntp = self.cfg["ntp"]
        if not ntp:
            return
        try:
            import ntptime

            if isinstance(ntp, str):
                ntptime.host = ntp
            ntptime.settime()
        except Exception as e:
            self.log("ntp: %r" % e)

    def _on_event(self, ev):
        # Called by the client's pump for every session event; never blocks.
        # (a tuple: see mqtt_session; 3 = a message, 4 = a publish acked)
        if ev[0] == 3 and ev[1] == self.t_cmd:
            self._enqueue_command(ev)
        elif ev[0] == 4:
            self._acked.set()
            if self._stalled and self.client.pending() < _RESULT_BACKLOG:
                # The worker can go on: let it, before more commands.
                self._stalled = False
                if len(self._cmds) >= _CMD_HOLD:
                    self.client.hold(True)

    # -- telemetry -------------------------------------------------------------

    async def _telemetry_loop(self):
        # Fixed rate: one message per interval on a schedule kept from the
        # first one after going online, so late wakes do not add up into
        # drift. A new interval (or coming back online) starts a new schedule.
        # Between messages the task sleeps; set_interval changes interval_ms
        # and wakes it by cancelling that sleep (asyncio.wait_for_ms on an
        # Event would cost two more tasks and a closure every message).
        client = self.client
        task = asyncio.current_task()
        while True:
            if not self._online.is_set():
                await self._online.wait()
            due = time.ticks_ms()
            period = self.interval_ms
            while self._online.is_set() and self.interval_ms == period:
                if client.connected:
                    msg = {"seq": self.seq, "ts": unix_time()}
                    await self.sensors.read_all(msg)
                    if client.connected:
                        # Once handed to the link a message has used its
                        # number, even if the link then fails: a subscriber
                        # sees a gap (a loss), never a repeat.
                        self.seq += 1
                        try:
                            await client.publish(self.t_telemetry, commands.dumps(msg), 0, False)
                        except LinkError:
                            pass  # the supervisor sees the same failure and reconnects
                now = time.ticks_ms()
                due = next_due(due, period, now)
                left = time.ticks_diff(due, now)
                if left > 0:
                    self._telemetry = task  # only while in this sleep
                    try:
                        await asyncio.sleep_ms(left)
                    except asyncio.CancelledError:
                        if self._telemetry is not None:
                            raise  # not set_interval (it clears the field first): the task ends
                    self._telemetry = None

    # -- commands ----------------------------------------------------------------

    def _enqueue_command(self, msg):
        # Called from the pump, so it never waits and costs O(1): a flood
        # must neither grow the heap nor stall telemetry. msg: the message
        # event (3, topic, payload, qos, retain, dup, packet_id, size).
        try:
            cmd_id, op, args = commands.parse(msg[2], msg[7])
        except commands.CommandError as e:
            cmd_id, op, args = e.cmd_id, None, str(e)
        busy = self._busy
        n = busy.get(cmd_id, -1) if op is not None else -1
        if 0 <= n < _CMD_QUEUE:
            # A redelivery while the first is queued or running: it gets the
            # first result once that exists, and is never run itself.
            busy[cmd_id] = n + 1
            return
        if n < 0 and len(self._cmds) < _CMD_QUEUE:
            if op is not None:
                busy[cmd_id] = 0  # redeliveries seen while queued or running
            self._cmds.append((cmd_id, op, args))
            self._cmd_ready.set()
            if len(self._cmds) >= _CMD_HOLD and not self._stalled:
                # Backpressure: the reader stops at the next command (TCP
                # holds the broker back) until the worker is down to _CMD_LOW.
                self.client.hold(True)
            return
        # Full while the worker waits for PUBACKs (the reader must read on
        # to get them), or too many redeliveries: answer now (a backend can
        # retry) instead of buffering.
        payload = None
        if op is not None:
            args = "busy: %d commands queued" % _CMD_QUEUE
            payload = commands.cache_get(self.results, cmd_id)
        if payload is None:
            payload = commands.error_result(cmd_id, args)
        # The pump sends it with its next write. QoS 0 while a window of
        # QoS 1 messages waits for acknowledgement: bounded, never queued.
        session = self.client.session
        if session.inflight_count() < _BUSY_WINDOW:
            session.publish(self.t_result, payload, 1, False, time.ticks_ms())
        elif self.client.connected:
            session.publish(self.t_result, payload, 0, False, time.ticks_ms())

    async def _command_worker(self):
        while True:
            await self._cmd_ready.wait()
            self._cmd_ready.clear()
            while self._cmds:
                cmd_id, op, args = self._cmds.pop(0)
                if len(self._cmds) <= _CMD_LOW:
                    self.client.hold(False)
                if op is None:  # parse error; args holds the message
                    await self._send_result(commands.error_result(cmd_id, args))
                    continue
                if op == "ota":  # loaded only now: ota.py resets into the update, or says why not
                    import ota

                    args = await ota.request(self, cmd_id, args["url"])
                    del ota
                    self._busy.pop(cmd_id, None)
                    await self._send_result(commands.error_result(cmd_id, args))
                    continue
                payload = commands.cache_get(self.results, cmd_id)
                if payload is None:
                    try:
                        payload = commands.ok_result(cmd_id, await self._execute(op, args))
                    except Exception as e:  # a failing handler must never take the device down
                        payload = commands.error_result(cmd_id, "%s failed: %s" % (op, e))
                    commands.cache_put(self.results, cmd_id, payload)
                else:
                    op = None  # a redelivery of a finished command: same answer, not run again
                # The first result, then the same again for each redelivery.
                for _ in range(1 + self._busy.pop(cmd_id, 0)):
                    await self._send_result(payload)
                if op == "reboot":
                    await self._go_offline("reboot")
                    machine.reset()
                elif op == "sleep":
                    await self._go_offline("sleep")
                    machine.deepsleep(args["seconds"] * 1000)
                await asyncio.sleep_ms(0)  # let telemetry and the pump run

    async def _send_result(self, payload):
        # Results are QoS 1: wait (bounded) while too many are unacknowledged,
        # so a command flood cannot grow the queue without limit.
        # Woken by each PUBACK (_acked), at most 30 s in all.
        client = self.client
        start = time.ticks_ms()
        while client.pending() >= _RESULT_BACKLOG:
            left = 30000 - time.ticks_diff(time.ticks_ms(), start)
            if left <= 0:
                break
            # The PUBACKs come through the reader: it must not hold meanwhile
            # (_on_event ends this once they made room).
            self._stalled = True
            client.hold(False)
            self._acked.clear()
            try:
                await wait_for_ms(self._acked.wait(), left)
            except asyncio.TimeoutError:
                pass
        try:
            await self.client.publish(self.t_result, payload, 1, False)
        except LinkError as e:
            self.log("cmd: result not sent: %s" % e)

    async def _execute(self, op, args):
        if op == "ping":
            return {"pong": unix_time()}
        if op == "read":
            r = {}
            await self.sensors.read_all(r)
            return r
        if op == "set_interval":
            self.interval_ms = args["seconds"] * 1000
            task = self._telemetry
            if task is not None:
                self._telemetry = None
                task.cancel()
            return {"interval": args["seconds"]}
        if op == "get_config":
            return commands.redacted(self.cfg)
        if op == "led":
            if self._led is None:
                self._led = machine.Pin(_LED_PIN, machine.Pin.OUT)
            self._led.value(1 if args["on"] else 0)
            return {"led": args["on"]}
        if op == "stats":
            gc.collect()
            alloc = gc.mem_alloc()
            free = gc.mem_free()
            # The largest free block: the biggest bytearray that can be had
            # now, by bisection to 16 bytes (a GC block on the ESP32; 32 on
            # the 64-bit unix port, where it matches mem_info()'s "max free
            # sz"). Each try is garbage at once; a failed one makes the GC
            # collect and retry.
            lo = 0
            hi = free + 1
            while hi - lo > 16:
                mid = (lo + hi) // 2
                try:
                    bytearray(mid)
                    lo = mid
                except MemoryError:
                    hi = mid
            try:
                rssi = self._sta.status("rssi")
            except Exception:
                rssi = None
            return {
                "heap_free": free,
                "heap_alloc": alloc,
                "heap_max_free": lo,
                "uptime_s": time.ticks_diff(time.ticks_ms(), self.started) // 1000,
                "reconnects": self.reconnects,
                "rssi": rssi,
            }
        if op == "reboot":
            return {"rebooting": True}
        if op == "sleep":
            return {"sleeping": args["seconds"]}
        raise ValueError("unknown op %s" % op)

    async def _go_offline(self, reason):
        # Planned offline: retained status with the reason, wait (bounded) for
        # the broker to acknowledge it and our results, then DISCONNECT so the
        # broker discards the Will.
        self._leaving = True
        client = self.client
        client.hold(False)  # the PUBACKs awaited below must not wait behind a held command
        if client.connected:
            payload = commands.dumps({"online": False, "reason": reason})
            try:
                await client.publish(self.t_status, payload, 1, True)
            except LinkError:
                pass
            start = time.ticks_ms()
            while client.connected and client.pending() and time.ticks_diff(time.ticks_ms(), start) < _OFFLINE_ACK_MS:
                await asyncio.sleep_ms(20)
        await client.disconnect()
        self.log("mqtt: offline (%s)" % reason)

    async def _chores(self):
        # One task for the slow chores (each task costs heap: a Task and a
        # frame): feed the watchdog (from the event loop, so a loop that
        # hangs stops feeding and the hardware resets the board), start the
        # planned shutdown when the BOOT button is pressed (its IRQ only
        # sets a flag), and while online check WiFi every _CHORE_MS (a
        # socket over a lost WiFi can stay silent for minutes).
        wdt_ms = self.cfg["wdt_ms"]
        wdt = machine.WDT(timeout=wdt_ms) if wdt_ms else None
        pressed = bytearray(1)

        def on_press(pin):
            pressed[0] = 1

        button = machine.Pin(_BUTTON_PIN, machine.Pin.IN, machine.Pin.PULL_UP)
        button.irq(on_press, machine.Pin.IRQ_FALLING)
        # A fixed-rate schedule (next_due): boards that woke late together
        # do not stay bunched up.
        period = min(_CHORE_MS, max(wdt_ms // 4, 100)) if wdt_ms else _CHORE_MS
        due = time.ticks_ms()
        while True:
            if wdt is not None:
                wdt.feed()
            if pressed[0]:
                pressed[0] = 0
                if not self._leaving:  # a task: the watchdog is fed meanwhile
                    asyncio.create_task(self._go_offline("shutdown"))
            pump = self._pump
            if pump is not None and not self._sta.isconnected():
                self.log("wifi: lost; closing the MQTT socket")
                self._wifi_lost = True
                self._pump = None
                pump.cancel()
            now = time.ticks_ms()
            due = next_due(due, period, now)
            await asyncio.sleep_ms(max(time.ticks_diff(due, now), 0))
