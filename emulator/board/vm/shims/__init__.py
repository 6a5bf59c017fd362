"""ESP32 modules written in MicroPython for boards on the real interpreter
(emulator/vm): `machine`, `network`, `esp32`, `ntptime`, `dht`, a `time`
that counts from the ESP32 epoch, the channel to the host (`_vmhost`) and
the entry script (`_vmboot`). These files run inside the `micropython`
process, never under CPython: the host puts this folder first on the VM's
`sys.path`. Everything that is board state (NVS, RTC memory, resets, the
watchdog, WiFi, sensors) is asked of the host over the channel.
"""
