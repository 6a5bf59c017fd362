# The ESP32's `machine` for a board on the real interpreter: reset causes,
# resets and deep sleep (the host ends this process and starts the next
# boot), the watchdog (armed and fed on the host, which resets a board it
# stops hearing from), Pin (the BOOT button is pin 0, the LED pin 2), I2C
# and ADC backed by the host's emulated chips, RTC with its memory.
import _vmhost as _h

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
PIN_WAKE = EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6
_freq = [160000000]


def reset_cause():
    return _h.cause


def wake_reason():
    return TIMER_WAKE if _h.cause == DEEPSLEEP_RESET else 0


def reset():
    _h.call("reset", HARD_RESET)


def soft_reset():
    _h.call("reset", SOFT_RESET)


def deepsleep(time_ms=0):
    _h.call("deepsleep", time_ms)


def lightsleep(time_ms=0):
    import utime

    utime.sleep_ms(time_ms)


def idle():
    pass


def unique_id():
    return _h.mac


def freq(hz=None):
    if hz is None:
        return _freq[0]
    _freq[0] = hz


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


class WDT:
    def __init__(self, id=0, timeout=5000):
        _h.call("wdt", timeout)

    def feed(self):
        _h.call("feed")


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if not isinstance(id, int) or not 0 <= id <= 39:
            raise ValueError("invalid pin")
        self._id = id
        if value is not None:
            self.value(value)

    def init(self, mode=-1, pull=-1, value=None):
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return _h.call("pin", self._id)
        _h.call("pin", self._id, 1 if v else 0)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3):
        _h.set_irq(self._id, handler)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    def __init__(self, pin, atten=None):
        self._pin = pin._id if isinstance(pin, Pin) else pin
        self._atten = 0 if atten is None else atten

    def atten(self, a):
        self._atten = a

    def width(self, w):
        pass

    def read_uv(self):
        return _h.call("adc", self._pin, self._atten, "read_uv")

    def read_u16(self):
        return _h.call("adc", self._pin, self._atten, "read_u16")

    def read(self):
        return _h.call("adc", self._pin, self._atten, "read")


class I2C:
    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        self._bus = id

    def scan(self):
        return _h.call("i2c_scan", self._bus)

    def readfrom_mem(self, addr, memaddr, nbytes, addrsize=8):
        return bytes(_h.call("i2c_read", self._bus, addr, memaddr, nbytes))

    def readfrom_mem_into(self, addr, memaddr, buf, addrsize=8):
        data = _h.call("i2c_read", self._bus, addr, memaddr, len(buf))
        for i in range(len(buf)):
            buf[i] = data[i]

    def writeto_mem(self, addr, memaddr, buf, addrsize=8):
        _h.call("i2c_write", self._bus, addr, memaddr, list(buf))


SoftI2C = I2C


class RTC:
    def __init__(self, id=0):
        pass

    def datetime(self, dt=None):
        import time

        if dt is None:
            t = time.gmtime()
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0)
        secs = time.mktime((dt[0], dt[1], dt[2], dt[4], dt[5], dt[6], 0, 0))
        _h.rtc_delta = _h.call("rtc_set", secs)

    def init(self, dt):
        self.datetime(dt)

    def memory(self, data=None):
        if data is None:
            return bytes(_h.call("rtc_memory"))
        if len(data) > 2048:
            raise ValueError("buffer too long")
        _h.call("rtc_memory", list(data))
