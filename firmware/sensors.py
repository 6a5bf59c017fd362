# sensors.py - the sensor registry: builds one driver per entry of
# cfg["sensors"] (validated by config.py) and reads them all into a telemetry
# dict. A sensor that fails leaves its readings out and names the reason in
# into["err"]; the others still report, and nothing here ever raises.
#
# Small drivers live here (DHT22 via `dht`, battery via machine.ADC and a
# divider, the MCU's own sensor); the BME280 has bme280.py. Hardware is
# touched when a Sensors object is built (pins, buses) and read, never at
# import. Every reading also passes a plausibility check: outside the
# sensor's range, or a jump no physical change makes between two reads
# ("spike"), is reported as an error instead of a value.
import time

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# reading -> (lowest, highest, largest plausible jump between reads, digits)
_LIMITS = (
    ("t", -40.0, 85.0, 8.0, 2),
    ("h", 0.0, 100.0, 25.0, 1),
    ("p", 300.0, 1100.0, 15.0, 2),
    ("bat", 0.0, 6.0, 0.8, 3),
    ("mcu", -40.0, 125.0, 0.0, 1),
)
_READINGS = (("bme280", ("t", "p", "h")), ("dht22", ("t", "h")), ("battery", ("bat",)), ("mcu", ("mcu",)))
_ERRNO_NAMES = ((5, "EIO"), (19, "ENODEV"), (110, "ETIMEDOUT"), (116, "ETIMEDOUT"), (11, "EAGAIN"))
_ADC_ATTEN_DB = (0, 2.5, 6, 11)  # index = machine.ADC.ATTN_0DB .. ATTN_11DB
_JUMP_WINDOW_MS = const(600000)  # after 10 min without a good value, any value in range is fine
_DHT_MIN_MS = const(2000)  # the DHT22 cannot measure more often
_BAT_SAMPLES = const(8)


def reason(e):
    """A short reason for telemetry's "err": ENODEV, ETIMEDOUT, stuck..."""
    if isinstance(e, OSError) and e.args and isinstance(e.args[0], int):
        for code, name in _ERRNO_NAMES:
            if code == e.args[0]:
                return name
        return "OSError %d" % e.args[0]
    msg = str(e)
    return (msg if msg else type(e).__name__)[:40]


# Drivers are plain state, not classes (each class costs the heap a few
# hundred bytes on every board, used or not): _build() makes a sensor's
# state, _read() measures with it. A sensor that could not be set up has
# kind None and its reason as state.


def _build(kind, spec, buses):
    if kind == "mcu":
        return None
    import machine

    if kind == "battery":
        atten = (machine.ADC.ATTN_0DB, machine.ADC.ATTN_2_5DB, machine.ADC.ATTN_6DB, machine.ADC.ATTN_11DB)
        adc = machine.ADC(machine.Pin(spec["pin"]), atten=atten[_ADC_ATTEN_DB.index(spec["atten"])])
        return (adc, spec["divider"])
    if kind == "dht22":
        import dht

        return [dht.DHT22(machine.Pin(spec["pin"])), time.ticks_ms(), None]  # device, ticks, values
    if kind == "bme280":
        from bme280 import BME280

        key = spec["i2c"]
        i2c = buses.get(key)
        if i2c is None:
            i2c = buses[key] = machine.I2C(key, scl=machine.Pin(spec["scl"]), sda=machine.Pin(spec["sda"]))
        return BME280(i2c, spec["addr"])
    raise ValueError("unknown sensor type %s" % kind)


async def _read(kind, state):
    # One measurement: a tuple of values in the order of _READINGS.
    if kind == "mcu":
        # ESP32-S2/S3/C3 have esp32.mcu_temperature() in degrees C; the
        # classic ESP32 only has raw_temperature() in degrees F.
        import esp32

        read = getattr(esp32, "mcu_temperature", None)
        if read is not None:
            return (read(),)
        return ((esp32.raw_temperature() - 32) / 1.8,)
    if kind == "bme280":
        return await state.read()
    if kind == "dht22":
        # The sensor answers at most every 2 s: a read sooner (a `read`
        # command right after telemetry) hands back the same tuple.
        now = time.ticks_ms()
        if state[2] is None or time.ticks_diff(now, state[1]) >= _DHT_MIN_MS:
            state[2] = None
            state[1] = now
            dev = state[0]
            dev.measure()  # OSError(ETIMEDOUT) when nobody answers, OSError on a bad checksum
            state[2] = (dev.temperature(), dev.humidity())
        return state[2]
    if kind == "battery":
        adc = state[0]
        if adc.read_u16() >= 65535:
            raise ValueError("over range (attenuation too low?)")
        total = 0
        for _ in range(_BAT_SAMPLES):
            total += adc.read_uv()  # calibrated microvolts at the pin
        return (total / _BAT_SAMPLES / 1000000 * state[1],)
    raise ValueError(state)  # kind None: the driver could not be set up


class Sensors:
    def __init__(self, specs, log=print):
        """Drivers for the entries of cfg["sensors"]; an empty list means the
        MCU's own sensor alone (it needs no wiring)."""
        self.log = log
        self.entries = []  # [names, base names, kind, state, last reason or None, last values]
        self._good = {}  # reading -> (value, ticks) last accepted
        self._pending = {}  # reading -> value rejected as a jump (a real step repeats)
        self._seen = {}  # reading -> the verdict on its last value (None: plausible)
        buses = {}
        for i, spec in enumerate(specs or ({"type": "mcu"},)):
            kind = spec.get("type")
            bases = ()  # type: tuple
            for k, names in _READINGS:
                if k == kind:
                    bases = names
            try:
                state = _build(kind, spec, buses)
            except Exception as e:  # a missing module, a bad pin: report, never crash
                log("sensors[%d] %s: %s" % (i, kind, e))
                kind, state = None, reason(e)
            prefix = spec.get("prefix", "")
            self.entries.append([tuple(prefix + n for n in bases), bases, kind, state, None, None])

    async def read_all(self, into):
        """Read every sensor into the dict `into` (readings, and "err" for
        the ones that failed this round)."""
        now = time.ticks_ms()  # the round's time for the jump checks (one clock read, not one a reading)
        for entry in self.entries:
            names, bases = entry[0], entry[1]
            try:
                values = await _read(entry[2], entry[3])
                why = None
            except Exception as e:
                values = ()
                why = reason(e)
                for n in names:
                    _fail(into, n, why)
            if why != entry[4]:
                self.log("sensor %s: %s" % ("/".join(names), why or "reading again"))
                entry[4] = why
            # A driver that hands back the very same tuple (a DHT22 read
            # within 2 s) gives no new measurement: it keeps its verdict.
            fresh = values is not entry[5]
            entry[5] = values
            for i in range(len(values)):
                self._accept(into, names[i], bases[i], values[i], fresh, now)

    def _accept(self, into, name, base, v, fresh, now):
        lim = None
        for x in _LIMITS:
            if x[0] == base:
                lim = x
                break
        if lim is None:
            into[name] = v
            return
        # The very same measurement again (the driver handed back its tuple,
        # so the same values): the same verdict. 0: none yet.
        why = 0 if fresh else self._seen.get(name, 0)
        if why == 0:
            # None when v is plausible, else the reason.
            _, lo, hi, jump, _ = lim
            why = None
            if not (lo <= v <= hi):  # also refuses NaN
                why = "out of range"
            else:
                good = self._good.get(name)
                if jump and good is not None and time.ticks_diff(now, good[1]) < _JUMP_WINDOW_MS and abs(v - good[0]) > jump:
                    pending = self._pending.get(name)
                    if pending is None or abs(v - pending) > jump:
                        self._pending[name] = v  # a real step shows again in the next measurement
                        why = "spike"
                if why is None:
                    self._pending.pop(name, None)
                    self._good[name] = (v, now)
            self._seen[name] = why  # (a str or None: no tuple a reading)
        if why is None:
            into[name] = round(v, lim[4])
        else:
            _fail(into, name, why)


def _fail(into, name, why):
    err = into.get("err")
    if err is None:
        err = into["err"] = {}
    err[name] = why
