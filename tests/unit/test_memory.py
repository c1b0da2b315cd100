"""The allocator policy of gateway/service/memory.py: the mechanism, not RSS (that figure is bench/ingest's)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# in a fresh process, as the gateway does it at start: glibc serves a request from free heap that fits
# before it considers a mapping, so the test's own process, with its history, would prove nothing
PROBE = """
import ctypes, ctypes.util
from gateway.service.memory import MMAP_THRESHOLD, tune_allocator

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                  "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Mallinfo2
assert tune_allocator()
before = libc.mallinfo2().hblks
payloads = [bytes(55_000) for _ in range(8)]  # a bulk command's payload: under glibc's default 128 KiB
mapped = libc.mallinfo2().hblks - before
del payloads
returned = before - libc.mallinfo2().hblks + mapped
small = [bytes(MMAP_THRESHOLD // 4) for _ in range(8)]  # events and the rest stay on the heap
print(mapped, returned, libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_bulk_sized_buffers_get_mappings_of_their_own_and_give_them_back() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    mapped, returned, small = (int(x) for x in out)
    assert mapped >= 6  # of 8: a free chunk left from the interpreter's start may still serve one or two
    assert returned == mapped
    assert small == 0


TRIM_PROBE = """
from gateway.service.memory import trim_allocator
held = [bytes(55_000) for _ in range(256)]  # a burst's bulk payloads, on the heap (default threshold)
keep = bytes(100)  # something allocated after them holds the heap's top
del held
print(trim_allocator())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc_trim")
def test_the_heap_a_burst_left_free_is_handed_back() -> None:
    """What App's allocator-trim task calls once a burst is over: malloc_trim releases the free heap the
    burst's payloads left, which glibc would otherwise keep (it returns only the heap's top by itself)."""
    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
