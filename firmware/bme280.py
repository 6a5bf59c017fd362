# bme280.py - the Bosch BME280 (temperature, pressure, humidity) over
# machine.I2C: chip id check, calibration read, one forced-mode measurement
# per read, and the datasheet's integer compensation (BST-BME280-DS002
# section 4.2.3: 32-bit formulas for T and H, the 64-bit one for P).
#
# The compensate_* functions and parse_calibration are pure (tested against
# the datasheet's worked example under CPython and the MicroPython VM). The
# driver touches the bus only when read; it keeps its state in the object.
import asyncio
import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


CHIP_ID = const(0x60)
REG_CHIP_ID = const(0xD0)
REG_CALIB_A = const(0x88)  # 26 bytes: dig_T1..dig_P9, (0xA0 unused), dig_H1
REG_CALIB_B = const(0xE1)  # 7 bytes: dig_H2..dig_H6
REG_CTRL_HUM = const(0xF2)
REG_STATUS = const(0xF3)
REG_CTRL_MEAS = const(0xF4)
REG_CONFIG = const(0xF5)
REG_DATA = const(0xF7)  # 8 bytes: press[3], temp[3], hum[2]
STATUS_MEASURING = const(0x08)
SKIPPED = const(0x80000)  # a 20-bit data register's reset value: nothing measured
# ctrl_hum 0x01: osrs_h = x1; ctrl_meas 0x25: osrs_t = x1, osrs_p = x1, mode = forced
_MEASURE_MS = const(10)  # forced mode at x1/x1/x1 takes at most 9.3 ms (datasheet 9.1)
_POLLS = const(5)
_STUCK_READS = const(5)  # identical raw words this many times in a row: stuck


class Calibration:
    """The trimming parameters dig_T1..dig_H6 (datasheet table 16)."""

    def __init__(self, t, p, h):
        self.t = t  # (dig_T1, dig_T2, dig_T3)
        self.p = p  # (dig_P1, ..., dig_P9)
        self.h = h  # (dig_H1, ..., dig_H6)


def parse_calibration(a, b):
    """Calibration from the 26 bytes at 0x88 and the 7 bytes at 0xE1."""
    v = struct.unpack("<HhhHhhhhhhhh", a[:24])
    h1 = a[25]
    h2, h3, e4, e5, e6, h6 = struct.unpack("<hBbBbb", b[:7])
    h4 = e4 * 16 + (e5 & 0x0F)  # signed 12 bits: 0xE4[7:0] / 0xE5[3:0]
    h5 = e6 * 16 + (e5 >> 4)  # signed 12 bits: 0xE6[7:0] / 0xE5[7:4]
    return Calibration(v[0:3], v[3:12], (h1, h2, h3, h4, h5, h6))


def _cdiv(a, b):
    # C integer division truncates toward zero; Python's // floors.
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def compensate_t(adc_t, cal):
    """(temperature in 0.01 degC, t_fine) from the raw 20-bit word."""
    t1, t2, t3 = cal.t
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    x = (adc_t >> 4) - t1
    var2 = (((x * x) >> 12) * t3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_p(adc_p, t_fine, cal):
    """Pressure in Pa as Q24.8 (divide by 256) from the raw 20-bit word; 0
    when the calibration would divide by zero."""
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal.p
    var1 = t_fine - 128000
    var2 = var1 * var1 * p6
    var2 = var2 + ((var1 * p5) << 17)
    var2 = var2 + (p4 << 35)
    var1 = ((var1 * var1 * p3) >> 8) + ((var1 * p2) << 12)
    var1 = (((1 << 47) + var1) * p1) >> 33
    if var1 == 0:
        return 0
    p = 1048576 - adc_p
    p = _cdiv(((p << 31) - var2) * 3125, var1)
    var1 = (p9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (p8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (p7 << 4)


def compensate_h(adc_h, t_fine, cal):
    """Relative humidity in % as Q22.10 (divide by 1024) from the raw 16-bit word."""
    h1, h2, h3, h4, h5, h6 = cal.h
    x = t_fine - 76800
    a = (((adc_h << 14) - (h4 << 20) - (h5 * x)) + 16384) >> 15
    b = (((((x * h6) >> 10) * (((x * h3) >> 11) + 32768)) >> 10) + 2097152) * h2 + 8192
    v = a * (b >> 14)
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * h1) >> 4)
    if v < 0:
        v = 0
    if v > 419430400:
        v = 419430400
    return v >> 12


def compensate(adc_t, adc_p, adc_h, cal):
    """(degC, hPa, %RH) as floats from the three raw words."""
    t, t_fine = compensate_t(adc_t, cal)
    return t / 100, compensate_p(adc_p, t_fine, cal) / 25600, compensate_h(adc_h, t_fine, cal) / 1024


class BME280:
    def __init__(self, i2c, addr=0x76):
        self.i2c = i2c
        self.addr = addr
        self.cal = None  # read on first use, and again after any failure
        self._buf = bytearray(8)
        self._last = None
        self._same = 0

    def _setup(self):
        i2c, addr = self.i2c, self.addr
        chip = i2c.readfrom_mem(addr, REG_CHIP_ID, 1)[0]
        if chip != CHIP_ID:
            raise ValueError("chip id 0x%02x, not a BME280" % chip)
        cal = parse_calibration(i2c.readfrom_mem(addr, REG_CALIB_A, 26), i2c.readfrom_mem(addr, REG_CALIB_B, 7))
        i2c.writeto_mem(addr, REG_CONFIG, b"\x00")  # no IIR filter, SPI off
        self.cal = cal

    async def read(self):
        """One forced measurement: (degC, hPa, %RH). Raises OSError for bus
        errors and ValueError for a wrong chip, no data or stuck data."""
        try:
            if self.cal is None:
                self._setup()
            return await self._measure()
        except Exception:
            self.cal = None
            raise

    async def _measure(self):
        i2c, addr, buf = self.i2c, self.addr, self._buf
        # (bytes literals, constants of the code: no allocation a measurement)
        i2c.writeto_mem(addr, REG_CTRL_HUM, b"\x01")  # takes effect with ctrl_meas
        i2c.writeto_mem(addr, REG_CTRL_MEAS, b"\x25")
        await asyncio.sleep_ms(_MEASURE_MS)
        polls = 0
        while i2c.readfrom_mem(addr, REG_STATUS, 1)[0] & STATUS_MEASURING:
            polls += 1
            if polls >= _POLLS:
                raise ValueError("measurement never ends")
            await asyncio.sleep_ms(2)
        i2c.readfrom_mem_into(addr, REG_DATA, buf)
        adc_p = (buf[0] << 12) | (buf[1] << 4) | (buf[2] >> 4)
        adc_t = (buf[3] << 12) | (buf[4] << 4) | (buf[5] >> 4)
        adc_h = (buf[6] << 8) | buf[7]
        if adc_t == SKIPPED or adc_p == SKIPPED:
            raise ValueError("no data")
        raw = (adc_t, adc_p, adc_h)
        self._same = self._same + 1 if raw == self._last else 0
        self._last = raw
        if self._same >= _STUCK_READS - 1:
            raise ValueError("stuck")
        return compensate(adc_t, adc_p, adc_h, self.cal)
