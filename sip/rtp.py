"""RTP (RFC 3550) for prompts: G.711 encoding (ITU-T G.711 µ-law and A-law) and packetising. Sans-IO.

A prompt is an 8 kHz, mono, 16-bit PCM WAV file. It is encoded once per codec and sent as 20 ms
packets (160 samples); what the far end sends us is discarded by the shell.
"""

from __future__ import annotations

import struct
import sys
import wave
from array import array
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .sdp import PCMA, PCMU

SAMPLE_RATE = 8000
FRAME = 160  # samples in 20 ms
PACKET_INTERVAL_S = FRAME / SAMPLE_RATE


class PromptError(ValueError):
    pass


def _ulaw(sample: int) -> int:
    """One 16-bit linear sample to G.711 µ-law (Sun's reference g711.c: 14-bit, bias 33, clip 8159)."""
    value = sample >> 2
    mask = 0x7F if value < 0 else 0xFF
    value = min(-value if value < 0 else value, 8159) + 33
    segment = next((i for i, end in enumerate(_SEG_UEND) if value <= end), 8)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((value >> (segment + 1)) & 0x0F)) ^ mask


_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)


def _alaw(sample: int) -> int:
    """One 16-bit linear sample to G.711 A-law (even bits inverted with 0x55)."""
    sign = 0x80 if sample >= 0 else 0
    magnitude = min(-sample - 1 if sample < 0 else sample, 32767) >> 3  # 13-bit
    if magnitude < 32:
        code = magnitude >> 1
    else:
        exponent = magnitude.bit_length() - 5  # 1..7
        code = (exponent << 4) | ((magnitude >> exponent) & 0x0F)
    return (sign | code) ^ 0x55


@cache
def _table(payload_type: int) -> bytes:
    """All 65,536 16-bit samples (as unsigned) to their 8-bit code."""
    encode = _ulaw if payload_type == PCMU else _alaw
    return bytes(encode(u - 65536 if u >= 32768 else u) for u in range(65536))


def encode(pcm16: bytes, payload_type: int) -> bytes:
    """Little-endian 16-bit PCM to G.711 in the codec the far end chose."""
    if payload_type not in (PCMU, PCMA):
        raise PromptError(f"no encoder for payload type {payload_type}")
    samples = array("H")
    samples.frombytes(pcm16[: len(pcm16) // 2 * 2])
    if samples.itemsize != 2:  # pragma: no cover - every platform CPython runs on has 16-bit "H"
        raise PromptError("16-bit samples are needed")
    if sys.byteorder == "big":  # pragma: no cover
        samples.byteswap()
    table = _table(payload_type)
    return bytes(table[s] for s in samples)


def load_wav(path: Path) -> bytes:
    """The PCM frames of an 8 kHz mono 16-bit WAV file; anything else is refused with the reason."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getnchannels() != 1 or w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2:
                raise PromptError(
                    f"{path.name}: need 8000 Hz mono 16-bit PCM, got {w.getframerate()} Hz, "
                    f"{w.getnchannels()} channel(s), {8 * w.getsampwidth()}-bit"
                )
            return w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise PromptError(f"{path.name}: not a PCM WAV file ({exc})") from None
    except OSError as exc:
        raise PromptError(f"{path.name}: {exc.strerror or exc}") from None


@dataclass
class RtpStream:
    """One outgoing RTP stream: sequence number and timestamp advance by packet (RFC 3550 §5.1)."""

    ssrc: int
    payload_type: int
    sequence: int = 0
    timestamp: int = 0
    _first: bool = field(default=True)

    def packet(self, payload: bytes) -> bytes:
        marker = 0x80 if self._first else 0  # the first packet of a talkspurt carries the marker bit
        self._first = False
        header = struct.pack(
            "!BBHII", 0x80, marker | self.payload_type, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc
        )
        self.sequence += 1
        self.timestamp += len(payload)
        return header + payload

    def packets(self, encoded: bytes) -> list[bytes]:
        """The whole prompt as 20 ms packets; the last one padded with silence to a full frame."""
        silence = b"\xff" if self.payload_type == PCMU else b"\xd5"
        out = []
        for i in range(0, len(encoded), FRAME):
            chunk = encoded[i : i + FRAME]
            out.append(self.packet(chunk + silence * (FRAME - len(chunk))))
        return out


def parse_header(packet: bytes) -> tuple[int, int, int, int] | None:
    """(payload type, sequence, timestamp, ssrc) of an RTP packet, None if it is not one."""
    if len(packet) < 12 or packet[0] >> 6 != 2:
        return None
    _, pt, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return pt & 0x7F, seq, ts, ssrc
