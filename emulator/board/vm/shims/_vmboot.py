# The entry script of a board on the real interpreter: the process's cwd
# is the board's flash root. Load the ESP32 modules (their heap is measured
# and left out of gc.mem_alloc(): on a board they are C in flash), connect
# to the host, then run boot.py and main.py as a board does; when main.py
# ends (or raises), sit at the "REPL" with every socket left as it is
# until the host resets the board. `_vmboot.py probe` prints the modules'
# heap and exits (the host adds it to the process's heap).
import sys
import gc

sys.path[:] = [sys.path[0], "", ".frozen"]
gc.collect()
_a0 = gc.mem_alloc()
import _vmhost
import _vmgc
import time
import machine
import network
import esp32
import ntptime
import dht

del time, machine, network, esp32, ntptime, dht
if sys.argv[1] == "probe":
    gc.collect()
    print(gc.mem_alloc() - _a0)
    raise SystemExit
_vmhost.start(int(sys.argv[1]))
del sys.argv[1:]
gc.collect()
_vmgc.overhead = gc.mem_alloc() - _a0
sys.modules["gc"] = _vmgc


def _run(name):
    try:
        f = open(name)
    except OSError:
        return True
    code = compile(f.read(), name, "exec")
    f.close()
    try:
        exec(code, {"__name__": "__main__"})
    except SystemExit:
        return False
    except BaseException as e:  # noqa: BLE001 - a board prints it and stops at the REPL
        sys.print_exception(e)
        return False
    return True


if _run("boot.py"):
    _run("main.py")
print("MicroPython v1.29 on esp32emu-vm; main.py ended")
_vmhost.call("halt")
