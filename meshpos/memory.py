"""Allocator tuning for the terminal process (glibc only; a no-op elsewhere).

Loading a compacted business day decodes one multi-megabyte Yjs update; its temporary block
vectors are large allocations.  glibc's *dynamic* mmap threshold rises after the first large
free, so later large temporaries land on the heap and stay there as fragmentation: a 5,000-order
day then costs ~8 MB more RSS than the same day loaded from its update log.  A fixed threshold
keeps large temporaries in mmap, which returns them to the OS when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold; returns whether it applied (False off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    if not applied:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; keeping the allocator's defaults")
    return applied
