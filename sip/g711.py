"""G.711 decoding (ITU-T G.711 µ-law and A-law to 16-bit linear PCM). Sans-IO, table-driven.

Rules:
- Decoding is a lookup in one 256-entry table per law, built once at import; a payload of any length
  decodes (every byte is a sample), an empty payload to an empty array.
- The tables are the inverse of sip/rtp.py's encoders (Sun's reference g711.c): µ-law with bias 0x84,
  A-law with the even bits inverted (0x55); decode(encode(x)) is within one quantisation step of x.
- Only PCMU (0) and PCMA (8) are known; any other payload type is refused with `CodecError`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .sdp import PCMA, PCMU

Pcm = npt.NDArray[np.int16]


class CodecError(ValueError):
    """A payload type this module has no decoder for."""


def _ulaw_sample(code: int) -> int:
    u = ~code & 0xFF
    magnitude = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - magnitude if u & 0x80 else magnitude - 0x84


def _alaw_sample(code: int) -> int:
    a = code ^ 0x55
    segment = (a & 0x70) >> 4
    magnitude = (a & 0x0F) << 4
    if segment == 0:
        magnitude += 8
    else:
        magnitude = (magnitude + 0x108) << (segment - 1)
    return magnitude if a & 0x80 else -magnitude


ULAW_TABLE: Pcm = np.array([_ulaw_sample(c) for c in range(256)], dtype=np.int16)
ALAW_TABLE: Pcm = np.array([_alaw_sample(c) for c in range(256)], dtype=np.int16)
ULAW_TABLE.setflags(write=False)
ALAW_TABLE.setflags(write=False)


def ulaw_decode(payload: bytes) -> Pcm:
    """µ-law bytes to 16-bit linear samples."""
    return ULAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def alaw_decode(payload: bytes) -> Pcm:
    """A-law bytes to 16-bit linear samples."""
    return ALAW_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def decode(payload: bytes, payload_type: int) -> Pcm:
    """An RTP G.711 payload to 16-bit linear samples, by its payload type (PCMU 0, PCMA 8)."""
    if payload_type == PCMU:
        return ulaw_decode(payload)
    if payload_type == PCMA:
        return alaw_decode(payload)
    raise CodecError(f"no decoder for payload type {payload_type}")
