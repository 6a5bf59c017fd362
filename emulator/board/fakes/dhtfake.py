"""The board's `dht` module: DHT11/DHT22 over one GPIO, like MicroPython's
drivers/dht/dht.py on top of the C `dht_readinto`. The sensor on the wire is
whatever emulator/board/sensors.py wired to that pin in the board's Environment;
an empty pin does not answer.

Failure modes (shared/PLATFORM.md): `measure()` raises OSError(ETIMEDOUT)
when nothing answers, and OSError on a checksum error. (MicroPython's own
dht.py raises a plain `Exception("checksum error")` there; firmware that
catches Exception handles both.)
"""

from __future__ import annotations

from emulator.board.fakes import BoundClass, mp_oserror

ETIMEDOUT = 116


class DhtModule:
    __name__ = "dht"

    def __init__(self, board):
        self._env = board.env
        self.DHTBase = BoundClass(DHTBase, self)
        self.DHT11 = BoundClass(DHT11, self)
        self.DHT22 = BoundClass(DHT22, self)

    def dht_readinto(self, pin, buf) -> None:
        pin_id = pin._id if hasattr(pin, "_id") else int(pin)
        sensor = self._env.dht.get(pin_id)
        if sensor is None:
            raise mp_oserror(ETIMEDOUT)
        sensor.readinto(buf)


class DHTBase:
    def __init__(self, module: DhtModule, pin):
        self._module = module
        self.pin = pin
        self.buf = bytearray(5)

    def measure(self) -> None:
        buf = self.buf
        self._module.dht_readinto(self.pin, buf)
        if (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF != buf[4]:
            raise OSError("checksum error")


class DHT11(DHTBase):
    def humidity(self):
        return self.buf[0]

    def temperature(self):
        return self.buf[2]


class DHT22(DHTBase):
    def humidity(self):
        return (self.buf[0] << 8 | self.buf[1]) * 0.1

    def temperature(self):
        t = ((self.buf[2] & 0x7F) << 8 | self.buf[3]) * 0.1
        return -t if self.buf[2] & 0x80 else t
