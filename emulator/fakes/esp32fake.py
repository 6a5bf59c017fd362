"""The board's `esp32` module: NVS (persisted per board, survives resets and
power loss like the flash partition it lives in) and the MCU temperature."""

from __future__ import annotations

ESP_ERR_NVS_NOT_FOUND = -4354
ESP_ERR_NVS_INVALID_LENGTH = -4364


class Esp32Module:
    __name__ = "esp32"
    HEAP_DATA = 4
    HEAP_EXEC = 1

    def __init__(self, board):
        self._board = board
        store = board.nvs

        class NVS:
            def __init__(self, namespace: str):
                if not isinstance(namespace, str) or not 0 < len(namespace) <= 15:
                    raise OSError(-4353)  # ESP_ERR_NVS_INVALID_NAME... close enough: bad name
                self._ns = namespace
                self._pending: dict[str, object] = dict(store.get(namespace, {}))
                self._erased: set[str] = set()

            def _get(self, key):
                if key in self._erased or key not in self._pending:
                    raise OSError(ESP_ERR_NVS_NOT_FOUND)
                return self._pending[key]

            def set_i32(self, key: str, value: int) -> None:
                if not -(2**31) <= value < 2**31:
                    raise OverflowError("value out of range for i32")
                self._erased.discard(key)
                self._pending[key] = int(value)

            def get_i32(self, key: str) -> int:
                v = self._get(key)
                if not isinstance(v, int):
                    raise OSError(-4355)  # ESP_ERR_NVS_TYPE_MISMATCH
                return v

            def set_blob(self, key: str, value) -> None:
                self._erased.discard(key)
                self._pending[key] = bytes(value)

            def get_blob(self, key: str, buf) -> int:
                v = self._get(key)
                if not isinstance(v, bytes):
                    raise OSError(-4355)
                if len(buf) < len(v):
                    raise OSError(ESP_ERR_NVS_INVALID_LENGTH)
                buf[: len(v)] = v
                return len(v)

            def erase_key(self, key: str) -> None:
                self._get(key)
                self._erased.add(key)

            def commit(self) -> None:
                ns = {k: v for k, v in self._pending.items() if k not in self._erased}
                store[self._ns] = ns
                board.save_nvs()

        self.NVS = NVS

    def mcu_temperature(self) -> float:
        return self._board.env.mcu_temperature()

    def raw_temperature(self) -> int:
        return int(self.mcu_temperature() * 9 / 5 + 32)

    def idf_heap_info(self, capabilities: int) -> list:
        return [(120000, 60000, 40000, 50000)]
