"""The board's `machine` module: identity, resets and their causes, deep
sleep, the watchdog, the RTC with its 2 KiB of memory, GPIO pins, and minimal
ADC/I2C. Resets never return: they raise `BoardReset`, which no firmware
`except Exception` can swallow, and the board reboots."""

from __future__ import annotations

from emulator.board.environment import _NORMAL
from emulator.board.fakes import BoundClass

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

# machine.wake_reason() on the ESP32 port
PIN_WAKE = EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6

RTC_MEMORY_MAX = 2048


class BoardReset(BaseException):
    """Raised by machine.reset()/deepsleep() to unwind firmware code."""

    def __init__(self, cause: int, sleep_ms: int | None = None):
        super().__init__(cause, sleep_ms)
        self.cause = cause
        self.sleep_ms = sleep_ms


class MachineModule:
    __name__ = "machine"
    PWRON_RESET = PWRON_RESET
    HARD_RESET = HARD_RESET
    WDT_RESET = WDT_RESET
    DEEPSLEEP_RESET = DEEPSLEEP_RESET
    SOFT_RESET = SOFT_RESET
    PIN_WAKE = PIN_WAKE
    EXT0_WAKE = EXT0_WAKE
    EXT1_WAKE = EXT1_WAKE
    TIMER_WAKE = TIMER_WAKE
    TOUCHPAD_WAKE = TOUCHPAD_WAKE
    ULP_WAKE = ULP_WAKE

    def __init__(self, board):
        self._board = board
        self._freq = 160_000_000

    # The peripheral classes, shared by every board, bound to this board on
    # first use (fakes.BoundClass): a fleet of thousands pays a few bytes a
    # board for the classes its firmware touches.
    def __getattr__(self, name: str):
        cls = _CLASSES.get(name)
        if cls is None:
            raise AttributeError(f"'module' object has no attribute '{name}'")
        bound = BoundClass(cls, self._board)
        setattr(self, name, bound)
        return bound

    def unique_id(self) -> bytes:
        return self._board.mac

    def reset(self) -> None:
        self._board.request_reset(HARD_RESET)
        raise BoardReset(HARD_RESET)

    def soft_reset(self) -> None:
        self._board.request_reset(SOFT_RESET)
        raise BoardReset(SOFT_RESET)

    def reset_cause(self) -> int:
        return self._board.reset_cause

    def wake_reason(self) -> int:
        return TIMER_WAKE if self._board.reset_cause == DEEPSLEEP_RESET else 0

    def deepsleep(self, time_ms: int | None = None) -> None:
        self._board.request_reset(DEEPSLEEP_RESET, sleep_ms=time_ms)
        raise BoardReset(DEEPSLEEP_RESET, time_ms)

    def lightsleep(self, time_ms: int | None = None) -> None:
        self._board.blocking_sleep((time_ms or 0) / 1000, "machine.lightsleep(%s)" % time_ms)

    def idle(self) -> None:
        pass

    def freq(self, hz: int | None = None):
        if hz is None:
            return self._freq
        if hz not in (20_000_000, 40_000_000, 80_000_000, 160_000_000, 240_000_000):
            raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
        self._freq = hz

    def disable_irq(self) -> int:
        return 0

    def enable_irq(self, state: int = 0) -> None:
        pass

    def time_pulse_us(self, pin, pulse_level, timeout_us=1000000) -> int:
        return -2


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, board, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        self._board = board
        if not isinstance(id, int) or not 0 <= id <= 39:
            raise ValueError("invalid pin")
        self._id = id
        self._mode = mode
        if value is not None:
            self.value(value)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        self._mode = mode
        if value is not None:
            self.value(value)

    def value(self, v=None):
        if v is None:
            return self._board.pins.get(self._id, 0)
        self._board.pins[self._id] = 1 if v else 0
        self._board.pin_writes[self._id] = self._board.pin_writes.get(self._id, 0) + 1
        return None

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)

    def irq(self, handler=None, trigger=3, **kw):
        if handler is None:
            self._board.pin_irqs.pop(self._id, None)
        else:
            self._board.pin_irqs[self._id] = handler
        return None

    def __repr__(self):
        return "Pin(%d)" % self._id


class WDT:
    def __init__(self, board, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        self._board = board
        self._board.arm_watchdog(timeout)

    def feed(self):
        self._board.feed_watchdog()


class RTC:
    def __init__(self, board, id=0):
        self._board = board

    def datetime(self, dt=None):
        import calendar

        from emulator.board.clock import UNIX_2000

        if dt is None:
            secs = self._board.clock.rtc_seconds()
            whole = int(secs)
            t = __import__("time").gmtime(whole + UNIX_2000)
            return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday, t.tm_hour, t.tm_min, t.tm_sec, int((secs - whole) * 1e6))
        year, month, day, _wd, hour, minute, second = dt[:7]
        us = dt[7] if len(dt) > 7 else 0
        unix = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
        self._board.clock.set_rtc(unix - UNIX_2000 + us / 1e6)

    def init(self, dt):
        self.datetime(dt)

    def memory(self, data=None):
        if data is None:
            return bytes(self._board.rtc_memory)
        data = bytes(data)
        if len(data) > RTC_MEMORY_MAX:
            raise ValueError("buffer too long")
        self._board.rtc_memory = data
        return None


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3
    WIDTH_12BIT = 3

    # The ESP32's 12-bit SAR converter: the input voltage at which the raw
    # code saturates (4095) for each attenuation, and its noise. read_uv()
    # is the calibrated voltage, so it stops rising at saturation too.
    FULL_SCALE_V = (1.1, 1.5, 2.2, 3.3)
    NOISE_V = 0.006

    def __init__(self, board, pin, *, atten=None):
        self._env = board.env
        self._pin = pin._id if hasattr(pin, "_id") else int(pin)
        self.atten(self.ATTN_0DB if atten is None else atten)

    def atten(self, a):
        if a not in (0, 1, 2, 3):
            raise ValueError("invalid attenuation")
        self._atten = a
        # codes per volt at the pin, the noise table in codes, microvolts per code
        self._per_volt, self._noise, self._uv = _PER_VOLT[a], _NOISE_CODES[a], _UV_PER_CODE[a]

    def width(self, w):
        pass

    def _code(self) -> int:
        return self._env.adc_code(self._pin, self._per_volt, self._noise)

    def read_uv(self) -> int:
        return int(self._env.adc_code(self._pin, self._per_volt, self._noise) * self._uv)

    def read_u16(self) -> int:
        return self._code() * 65535 // 4095

    def read(self) -> int:
        return self._code()


# Per attenuation: codes per volt at the pin, microvolts per code (read_uv),
# and the converter's noise (N(0, 1) scaled to NOISE_V) in codes.
_PER_VOLT = tuple(4095 / fs for fs in ADC.FULL_SCALE_V)
_UV_PER_CODE = tuple(fs / 4095 * 1_000_000 for fs in ADC.FULL_SCALE_V)
_NOISE_CODES = tuple(tuple(x * ADC.NOISE_V * per_volt for x in _NORMAL) for per_volt in _PER_VOLT)


class I2C:
    def __init__(self, board, id=0, *, scl=None, sda=None, freq=400000, timeout=50000):
        self._bus = board.i2c_bus(id)

    def scan(self) -> list:
        return self._bus.scan()

    # Straight to the chip the bus answers with (I2CBus.device: the NAK and
    # the bus errors), one call less per transfer than I2CBus.read/write.
    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8) -> bytes:
        return self._bus.device(addr).read(memaddr, nbytes)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8) -> None:
        buf[:] = self._bus.device(addr).read(memaddr, len(buf))

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8) -> None:
        self._bus.device(addr).write(memaddr, bytes(buf))


# What `machine.<name>` is on every board (bound to it by MachineModule).
_CLASSES = {"Pin": Pin, "WDT": WDT, "RTC": RTC, "ADC": ADC, "I2C": I2C, "SoftI2C": I2C}
