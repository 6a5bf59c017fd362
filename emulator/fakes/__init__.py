"""Fakes of the MicroPython modules a board provides (machine, network, esp32,
time, asyncio, os, gc, ntptime, sys, random, micropython), each bound to one
board. `modules_for(board)` returns the import table the loader uses.

They imitate the ESP32 port's behaviour listed in shared/PLATFORM.md; they do
not patch anything in CPython.
"""
