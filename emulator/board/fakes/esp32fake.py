"""The board's `esp32` module: NVS (persisted per board, survives resets and
power loss like the flash partition it lives in) and the MCU temperature."""

from __future__ import annotations

from emulator.board.fakes import BoundClass, mp_oserror

ESP_ERR_NVS_NOT_FOUND = -4354
ESP_ERR_NVS_INVALID_LENGTH = -4364


class Esp32Module:
    __name__ = "esp32"
    HEAP_DATA = 4
    HEAP_EXEC = 1

    def __init__(self, board):
        self._board = board
        self.NVS = BoundClass(NVS, board)

    def mcu_temperature(self) -> float:
        return self._board.env.mcu_temperature()

    def raw_temperature(self) -> int:
        return int(self.mcu_temperature() * 9 / 5 + 32)

    def idf_heap_info(self, capabilities: int) -> list:
        return [(120000, 60000, 40000, 50000)]


class NVS:
    # Write-through like ESP-IDF's NVS: a set is visible to every
    # handle of the namespace at once and lands in flash (survives any
    # reset); commit() is kept for API fidelity.
    def __init__(self, board, namespace: str):
        if not isinstance(namespace, str) or not 0 < len(namespace) <= 15:
            raise mp_oserror(-4353)  # bad namespace name
        self._board = board
        self._ns = namespace

    def _get(self, key):
        items = self._board.nvs.get(self._ns, {})
        if key not in items:
            raise mp_oserror(ESP_ERR_NVS_NOT_FOUND)
        return items[key]

    def _set(self, key, value) -> None:
        self._board.nvs.setdefault(self._ns, {})[key] = value
        self._board.save_nvs()

    def set_i32(self, key: str, value: int) -> None:
        if not -(2**31) <= value < 2**31:
            raise OverflowError("value out of range for i32")
        self._set(key, int(value))

    def get_i32(self, key: str) -> int:
        v = self._get(key)
        if not isinstance(v, int):
            raise mp_oserror(-4355)  # ESP_ERR_NVS_TYPE_MISMATCH
        return v

    def set_blob(self, key: str, value) -> None:
        self._set(key, bytes(value))

    def get_blob(self, key: str, buf) -> int:
        v = self._get(key)
        if not isinstance(v, bytes):
            raise mp_oserror(-4355)
        if len(buf) < len(v):
            raise mp_oserror(ESP_ERR_NVS_INVALID_LENGTH)
        buf[: len(v)] = v
        return len(v)

    def erase_key(self, key: str) -> None:
        self._get(key)
        del self._board.nvs[self._ns][key]
        self._board.save_nvs()

    def commit(self) -> None:
        self._board.save_nvs()
