"""Host memory that is reused instead of handed back: fewer page faults for XLA:CPU's buffers.

XLA:CPU allocates its large buffers (a full-width fc6 weight is 411 MB in float32, its gradient
and momentum as much again) with the C library's malloc, and frees them after each computation.
glibc's defaults serve every block over 32 MB with a fresh `mmap` and return it with `munmap` when
freed, so the next step's buffer of the same size is new memory: the kernel zeroes and maps each
page again: a quarter of a full-width float64 gradient check's time on a CPU goes to the
kernel (docs/speed.md has the measurements). `keep_freed_memory()` tells glibc to serve large
blocks from its heap as well and to keep freed memory for reuse; the process's memory then stays
near its peak instead of falling between steps.

Every vgg-flax program calls it at start (`vgg_flax.cli.entry_point`); a library user may. It
changes only this process's allocator, and does nothing where the C library is not glibc or when
`VGG_FLAX_KEEP_FREED_MEMORY=0`. `ENVIRONMENT` holds the same settings as glibc's environment
variables, for processes started by others (the test suite gives them to its subprocesses).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

ENV = "VGG_FLAX_KEEP_FREED_MEMORY"
OFF = ("off", "0", "none", "false", "no")

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
# Memory over this much at the top of the heap is still returned (mallopt takes a C int).
_TRIM_THRESHOLD = 2**31 - 1
# Heap growth in steps of 256 MB: fewer brk calls; untouched pages cost no memory.
_TOP_PAD = 256 << 20
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
# The same, as glibc reads them from the environment when a process starts.
ENVIRONMENT = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(_TRIM_THRESHOLD),
    "MALLOC_TOP_PAD_": str(_TOP_PAD),
}


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (no mmap per large block); True when applied.

    Call it early, before the large allocations. Safe to call more than once; off where the C
    library is not glibc, and with $VGG_FLAX_KEEP_FREED_MEMORY=0.
    """
    if os.environ.get(ENV, "").strip().lower() in OFF:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # only glibc has mallopt's parameters as used here
        mallopt, _ = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(mallopt(parameter, value) == 1 for parameter, value in _SETTINGS)  # 1: success
