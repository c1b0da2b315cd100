"""Received RTP per call (sip/rtp_in.py): order, loss, duplicates, new sources, hostile packets."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from sip.rtp import encode
from sip.rtp_in import AudioFrame, EventPayload, RtpReceiver, parse

SILENCE = encode(bytes(320), 0)  # 20 ms of PCMU


def rtp(seq: int, ts: int, pt: int = 0, ssrc: int = 7, payload: bytes = SILENCE, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def times(out: list[AudioFrame | EventPayload]) -> list[int]:
    return [f.t_ms for f in out]


def test_frames_come_out_in_order_on_the_calls_timeline() -> None:
    rx = RtpReceiver(answered_at=10.0)
    out = []
    for i in (0, 2, 1, 3, 4, 5):  # one packet reordered
        out += rx.packet(rtp(100 + i, 5000 + 160 * i), 10.5 + 0.02 * i)
    out += rx.flush()
    assert times(out) == [500, 520, 540, 560, 580, 600]
    assert all(isinstance(f, AudioFrame) and len(f.pcm) == 160 for f in out)


def test_a_lost_packet_is_a_gap_and_a_late_or_repeated_one_is_dropped() -> None:
    rx = RtpReceiver(answered_at=0.0)
    out = []
    for i in (0, 1, 3, 4, 5, 6, 2, 6):  # 2 arrives after it was given up; 6 twice
        out += rx.packet(rtp(i, 160 * i), 0.02 * i)
    out += rx.flush()
    assert times(out) == [0, 20, 60, 80, 100, 120]
    assert rx.stats["late"] == 1 and rx.stats["duplicate"] == 1 and rx.stats["lost"] == 1


def test_sequence_and_timestamp_wrap_around() -> None:
    rx = RtpReceiver(answered_at=0.0)
    out = []
    for i in range(6):
        out += rx.packet(rtp(65533 + i, 2**32 - 320 + 160 * i), 0.02 * i)
    out += rx.flush()
    assert times(out) == [0, 20, 40, 60, 80, 100]


def test_a_new_ssrc_restarts_the_timeline_from_its_arrival() -> None:
    rx = RtpReceiver(answered_at=0.0)
    out = []
    for i in range(3):
        out += rx.packet(rtp(i, 160 * i, ssrc=1), 0.02 * i)
    for i in range(3):
        out += rx.packet(rtp(9000 + i, 777 + 160 * i, ssrc=2), 2.0 + 0.02 * i)
    out += rx.flush()
    assert times(out) == [0, 20, 40, 2000, 2020, 2040]
    assert rx.stats["new_ssrc"] == 1


def test_telephone_events_pass_through_and_other_payloads_are_dropped() -> None:
    rx = RtpReceiver(answered_at=0.0, depth=0)
    event = rx.packet(rtp(1, 800, pt=101, payload=bytes([5, 0x80, 0, 160]), marker=True), 0.1)
    assert event == [EventPayload(100, 800, True, bytes([5, 0x80, 0, 160]))]
    assert rx.packet(rtp(2, 960, pt=13, payload=b"\x40"), 0.12) == []  # comfort noise
    assert rx.stats["other_payload"] == 1


def test_csrcs_extension_and_padding_are_skipped() -> None:
    header = struct.pack("!BBHII", 0x80 | 0x20 | 0x10 | 2, 8, 1, 0, 9) + b"\x00" * 8  # two CSRCs
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x01\x02\x03\x04"
    pkt = parse(header + extension + b"\xd5" * 160 + b"\x00\x00\x03")
    assert pkt is not None and pkt.payload_type == 8 and pkt.payload == b"\xd5" * 160


@given(st.binary(max_size=300))
def test_any_bytes_are_counted_never_raised(data: bytes) -> None:
    rx = RtpReceiver(answered_at=0.0)
    rx.packet(data, 0.0)
    rx.flush()
