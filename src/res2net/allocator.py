"""The process's memory allocator (glibc malloc) tuned for CPU training and inference.

glibc's malloc hands freed blocks above ``M_MMAP_THRESHOLD`` (and the heap top above ``M_TRIM_THRESHOLD``)
back to the kernel; a training loop frees and re-allocates the same activation buffers every step, so each
step pays page faults and the kernel zeroes every page again. :func:`keep_freed_memory` raises
both thresholds so freed buffers stay in the process and are reused, which is what tcmalloc/jemalloc do.
Measurements: docs/BENCHMARKS.md ("The allocator setting").

The ``res2net`` console script calls it once at start (``res2net.cli.run``; ``RES2NET_MALLOC_TUNING=0`` turns it
off); ``res2net.cli.main`` called from another program does not, and library users may call it themselves. It
only changes allocator thresholds, never results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

# mallopt parameter numbers (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps M_MMAP_THRESHOLD at HEAP_MAX/2 = 32 MiB on 64-bit builds; larger blocks are still mmap'ed
_MMAP_THRESHOLD_BYTES = 32 * 2**20
_TRIM_THRESHOLD_BYTES = 2**30

_applied = False


def keep_freed_memory() -> bool:
    """Keep freed buffers (up to 32 MiB each) in the process instead of returning them to the kernel.

    Returns True when the glibc settings were applied (now or by an earlier call); False on other C
    libraries or platforms, or when ``RES2NET_MALLOC_TUNING=0``.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("RES2NET_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1 and ok
    _applied = ok
    return ok
