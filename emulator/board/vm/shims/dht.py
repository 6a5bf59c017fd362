# The ESP32's `dht` for a board on the real interpreter: the pulse train is
# read by the host from the emulated sensor wired to that pin.
import _vmhost as _h


class DHTBase:
    def __init__(self, pin):
        self.pin = pin._id if hasattr(pin, "_id") else pin
        self.buf = bytearray(5)

    def measure(self):
        data = _h.call("dht", self.pin)
        buf = self.buf
        for i in range(5):
            buf[i] = data[i]
        if (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF != buf[4]:
            raise Exception("checksum error")


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
