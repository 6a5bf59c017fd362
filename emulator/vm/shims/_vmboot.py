# The entry script of a board on the real interpreter: the process's cwd
# is the board's flash root. Connect to the host, then run boot.py and
# main.py as a board does; when main.py ends (or raises), sit at the "REPL"
# with every socket left as it is until the host resets the board.
import sys

sys.path[:] = [sys.path[0], "", ".frozen"]
import _vmhost

_vmhost.start(int(sys.argv[1]))
del sys.argv[1:]


def _run(name):
    try:
        f = open(name)
    except OSError:
        return True
    src = f.read()
    f.close()
    try:
        exec(src, {"__name__": "__main__"})
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
