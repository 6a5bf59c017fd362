# The board's `gc` for a board on the real interpreter: the unix port's
# built-in, except that mem_alloc() leaves out the shims' own objects
# (measured at boot by _vmboot). On a board these modules are C in flash
# and use no heap; the host starts the process with that much more heap,
# so mem_free() is what the firmware would have on the board.
from gc import collect, enable, disable, isenabled, mem_free  # noqa: F401
import gc as _gc

overhead = 0


def mem_alloc():
    return _gc.mem_alloc() - overhead


def threshold(*a):
    return _gc.threshold(*a)
