"""Received RTP, per call, as a sans-IO core: packets in (with their arrival time), 20 ms frames out.

Rules:
- A packet is RFC 3550's: version 2, CSRCs, a header extension and padding are skipped to reach the
  payload; anything else (too short, another version, padding longer than the packet) is counted and
  dropped, never raised.
- One stream per call. Its SSRC is the first one heard; a new SSRC (a re-INVITE, a transfer, a media
  server taking over) restarts the stream's timeline from that packet's arrival, so times stay monotonic.
- Times are the media's own: a frame's `t_ms` is its RTP timestamp's distance from the stream's first
  packet (8 kHz: 8 samples a ms), placed on the call's timeline by that first packet's arrival. Jitter in
  arrival does not move a frame; a lost packet is a gap in `t_ms`, which the consumer sees.
- Reordering is repaired within `depth` packets (default 3, 60 ms): packets are held until `depth` newer
  ones arrived or `flush()`; a packet older than the last one released is late and dropped; a duplicate
  is dropped.
- G.711 (payload types 0 PCMU and 8 PCMA) is decoded to 16-bit linear frames; RFC 4733 telephone-events
  (the payload type negotiated, 101 by default) pass through as `EventPayload` for sip/dtmf.py; other
  payload types (comfort noise, video) are counted and dropped.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field

from sip.g711 import Pcm, decode

SAMPLES_PER_MS = 8
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
G711 = (0, 8)


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse(data: bytes) -> RtpPacket | None:
    """An RTP packet (RFC 3550 §5.1), or None when `data` is not one."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    first, second, sequence, timestamp, ssrc = struct.unpack("!BBHII", data[:12])
    offset = 12 + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if len(data) < offset + 4:
            return None
        (words,) = struct.unpack("!H", data[offset + 2 : offset + 4])
        offset += 4 + 4 * words
    end = len(data)
    if first & 0x20:  # padding: the last octet counts it
        if end == 0 or data[-1] == 0 or data[-1] > end - offset:
            return None
        end -= data[-1]
    if offset > end:
        return None
    return RtpPacket(second & 0x7F, bool(second & 0x80), sequence, timestamp, ssrc, bytes(data[offset:end]))


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """Decoded linear PCM (16-bit samples, 8 kHz) starting `t_ms` after the call's answer."""

    t_ms: int
    pcm: Pcm
    payload_type: int


@dataclass(frozen=True, slots=True)
class EventPayload:
    """An RFC 4733 telephone-event packet, for sip/dtmf.py: its RTP timestamp identifies the event."""

    t_ms: int
    timestamp: int
    marker: bool
    payload: bytes


@dataclass
class RtpReceiver:
    """One call's received RTP: packets in order, decoded, on the call's timeline (see the rules above)."""

    answered_at: float  # the call's answer, on the same clock as the arrival times
    event_payload_type: int = 101
    depth: int = 3
    stats: Counter[str] = field(default_factory=Counter)
    _ssrc: int | None = None
    _base_ts: int = 0  # the stream's first timestamp
    _base_ms: int = 0  # where the stream's first packet sits on the call's timeline
    _last_ts: int | None = None  # the last released packet's unwrapped timestamp
    _cycles: int = 0  # timestamp wrap-arounds
    _held: dict[int, tuple[int, RtpPacket]] = field(default_factory=dict)  # extended seq → (unwrapped ts, packet)
    _top_seq: int | None = None  # the highest extended sequence heard
    _released_seq: int | None = None

    def packet(self, data: bytes, arrival: float) -> list[AudioFrame | EventPayload]:
        pkt = parse(data)
        if pkt is None:
            self.stats["not_rtp"] += 1
            return []
        if pkt.payload_type not in G711 and pkt.payload_type != self.event_payload_type:
            self.stats["other_payload"] += 1
            return []
        if pkt.ssrc != self._ssrc:
            out = self.flush() if self._ssrc is not None else []
            self._restart(pkt, arrival)
            return out + self._receive(pkt)
        return self._receive(pkt)

    def flush(self) -> list[AudioFrame | EventPayload]:
        """Release every held packet (the call ended, or a pause in the stream)."""
        out: list[AudioFrame | EventPayload] = []
        for seq in sorted(self._held):
            out.extend(self._release(seq))
        return out

    def _restart(self, pkt: RtpPacket, arrival: float) -> None:
        if self._ssrc is not None:
            self.stats["new_ssrc"] += 1
        self._ssrc = pkt.ssrc
        self._base_ts = pkt.timestamp
        self._cycles = 0
        self._last_ts = None
        self._held.clear()
        self._top_seq = None
        self._released_seq = None
        self._base_ms = max(0, round((arrival - self.answered_at) * 1000))

    def _extend_seq(self, seq: int) -> int:
        if self._top_seq is None:
            return seq
        top = self._top_seq
        candidate = (top & ~(SEQ_MOD - 1)) | seq
        if candidate < top - SEQ_MOD // 2:
            candidate += SEQ_MOD
        elif candidate > top + SEQ_MOD // 2:
            candidate -= SEQ_MOD
        return candidate

    def _unwrap_ts(self, ts: int) -> int:
        delta = (ts - self._base_ts) % TS_MOD
        if delta > TS_MOD // 2:  # before the stream's first packet (reordered): negative
            delta -= TS_MOD
        return delta

    def _receive(self, pkt: RtpPacket) -> list[AudioFrame | EventPayload]:
        seq = self._extend_seq(pkt.sequence)
        if self._released_seq is not None and seq <= self._released_seq:
            self.stats["late"] += 1
            return []
        if seq in self._held:
            self.stats["duplicate"] += 1
            return []
        self._held[seq] = (self._unwrap_ts(pkt.timestamp), pkt)
        if self._top_seq is None or seq > self._top_seq:
            self._top_seq = seq
        out: list[AudioFrame | EventPayload] = []
        while len(self._held) > self.depth:
            out.extend(self._release(min(self._held)))
        return out

    def _release(self, seq: int) -> list[AudioFrame | EventPayload]:
        ts, pkt = self._held.pop(seq)
        if self._released_seq is not None and seq > self._released_seq + 1:
            self.stats["lost"] += seq - self._released_seq - 1
        self._released_seq = seq
        t_ms = self._base_ms + ts // SAMPLES_PER_MS
        if pkt.payload_type == self.event_payload_type:
            return [EventPayload(t_ms, pkt.timestamp, pkt.marker, pkt.payload)]
        if self._last_ts is not None and ts <= self._last_ts:
            self.stats["timestamp_back"] += 1
            return []
        self._last_ts = ts
        self.stats["frames"] += 1
        return [AudioFrame(t_ms, decode(pkt.payload, pkt.payload_type), pkt.payload_type)]
