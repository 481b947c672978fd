"""glibc malloc settings that stop a CPU training step from mapping and unmapping its buffers.

By default glibc serves allocations above a (dynamic) threshold with ``mmap`` and returns them
with ``munmap``, and gives freed memory at the top of the heap back to the system; a training
step on the CPU allocates and frees the same large activation buffers every step, so every
step pays page faults for memory it just returned. :func:`tune_glibc_malloc` raises the
thresholds at run time, as the environment variables ``MALLOC_MMAP_THRESHOLD_=33554432
MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824`` do at process start
(``benchmarks/malloc.py`` measures both).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

#: Allocations up to 32 MiB (glibc's largest allowed threshold) come from the heap.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
#: Free memory at the heap's top is returned to the system only above 2 GiB (mallopt takes an
#: ``int``; the environment variable's 4 GiB does not fit).
TRIM_THRESHOLD_BYTES = 2**31 - 1
#: Each heap extension asks the system for 1 GiB more (address space; pages are touched lazily).
TOP_PAD_BYTES = 1024 * 1024 * 1024


def tune_glibc_malloc() -> bool:
    """Set glibc's mmap threshold, trim threshold and top pad for training (see the module).

    A no-op where the C library is not glibc (macOS, Windows, musl). Idempotent: calling it
    again sets the same values.

    Returns:
        whether the settings were applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 -- present in glibc only
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (M_TOP_PAD, TOP_PAD_BYTES),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
