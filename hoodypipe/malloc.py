"""Keep glibc from handing relay buffers back to the kernel after each read.

Every socket read and every framed write is a fresh ~1 MiB bytes object.
By default glibc serves blocks that size with mmap and trims the heap when
they are freed, so each one costs ~256 page faults to map and zero again:
measured, ~500,000 faults and ~1.5 s of system time per GiB relayed. With
the thresholds raised, freed buffers are reused from the heap instead
(~500 faults per GiB). Memory stays bounded: at most the trim threshold of
free heap is kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024


def keep_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
