"""The allocator's policy for large buffers (issue 11: RSS with queued contacts).

A bulk `dial` of 1,000 contacts is a ~55 KB MQTT payload, and with Receive Maximum 256 a burst holds up
to 256 of them as raw bytes (plus paho's receive buffer and its payload slice per packet). glibc serves
anything under its mmap threshold (128 KiB, raised at run time up to 32 MiB by every mmapped chunk that
is freed) from the main heap, which it can only give back from its top: after a burst those ~14 MiB
were free heap the process kept for good (bench/ingest: malloc_trim(0) gave 12.6 of 15 MiB back).

What the gateway does: `trim_allocator()` (glibc's `malloc_trim(0)`) once a burst of commands is over
(App's `allocator-trim` task: commands arrived since its last look, none in the last second), which hands
the free heap back. `tune_allocator()` — a fixed mmap threshold of 32 KiB, so every such buffer gets a
mapping of its own — was the first fix; bench/pipeline measured it at +37 % gateway CPU per event
(0.51 → 0.70 s per 1,000), the mmap/munmap and the zeroed pages of every buffer of 32 KiB or more on the
hot path, so it is kept only as a documented alternative and not called.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("telgate.memory")
MMAP_THRESHOLD = 32 * 1024  # a bulk command's payload (~55 KB) is above it, an event (~600 B) far below
M_MMAP_THRESHOLD = -3  # glibc <malloc.h>


def tune_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap threshold; False where the C library is not glibc (nothing to do there)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not ok:
        log.warning("mallopt(M_MMAP_THRESHOLD) refused", extra={"detail": str(threshold)})
    return ok


def trim_allocator() -> bool:
    """Give the heap's free memory back to the system (glibc's malloc_trim(0)); False where there is no
    glibc or nothing was released."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
