# The ESP32's `esp32` for a board on the real interpreter: NVS kept by the
# host (it survives resets and power loss like its flash partition; a
# missing key raises OSError(-4354)) and the MCU temperature.
import _vmhost as _h

HEAP_DATA = 4
HEAP_EXEC = 1


class NVS:
    def __init__(self, namespace):
        self._ns = namespace
        _h.call("nvs", namespace, "open")

    def set_i32(self, key, value):
        _h.call("nvs", self._ns, "set_i32", key, value)

    def get_i32(self, key):
        return _h.call("nvs", self._ns, "get_i32", key)

    def set_blob(self, key, value):
        _h.call("nvs", self._ns, "set_blob", key, list(value))

    def get_blob(self, key, buf):
        data = _h.call("nvs", self._ns, "get_blob", key, len(buf))
        for i in range(len(data)):
            buf[i] = data[i]
        return len(data)

    def erase_key(self, key):
        _h.call("nvs", self._ns, "erase_key", key)

    def commit(self):
        _h.call("nvs", self._ns, "commit")


def mcu_temperature():
    return _h.call("mcu")


def raw_temperature():
    return int(mcu_temperature() * 9 / 5 + 32)
