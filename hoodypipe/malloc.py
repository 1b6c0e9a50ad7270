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


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def keep_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds; False where there is no glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def give_back() -> bool:
    """Return free heap to the kernel (``malloc_trim``): for quiet moments,
    since the raised trim threshold otherwise keeps a past peak resident."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    return bool(trim(0))
