"""sip/dtmf.py: RFC 4733 telephone events (each press once), SIP INFO bodies and Gather (Twilio's rules)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.dtmf import (
    DigitReceived,
    DtmfError,
    Gather,
    GatherResult,
    InfoDigit,
    TelephoneEvent,
    TelephoneEventReceiver,
    parse_info,
    parse_telephone_event,
)


def event(n: int, end: bool = False, volume: int = 10, duration: int = 160) -> bytes:
    return struct.pack("!BBH", n, (0x80 if end else 0) | volume, duration)


def test_telephone_event_fields() -> None:
    ev = parse_telephone_event(event(11, end=True, volume=63, duration=1280) + b"extra")
    assert ev == TelephoneEvent(event=11, end=True, volume=63, duration=1280)
    assert ev.digit == "#"
    assert parse_telephone_event(event(16)).digit is None  # flash
    with pytest.raises(DtmfError):
        parse_telephone_event(b"\x05\x8a\x00")


def test_a_press_sent_as_start_updates_and_three_ends_counts_once() -> None:
    rx = TelephoneEventReceiver()
    packets = [event(5, duration=160 * i) for i in (1, 2, 3)] + [event(5, end=True, duration=640)] * 3
    got = [rx.receive(p, 8000) for p in packets]
    assert got == [DigitReceived("5", 8000), None, None, None, None, None]
    assert rx.receive(event(5), 9600) == DigitReceived("5", 9600)  # the same key again: a new press
    assert rx.receive(event(5, end=True), 12000) == DigitReceived("5", 12000)  # only its end packets arrived
    assert rx.receive(event(5, end=True), 12000) is None


def test_a_long_event_in_segments_is_one_press() -> None:
    rx = TelephoneEventReceiver()
    assert rx.receive(event(1, duration=0xFFFF), 1000) == DigitReceived("1", 1000)
    assert rx.receive(event(1, duration=800), 1000 + 0xFFFF) is None
    assert rx.receive(event(1, end=True, duration=800), 1000 + 0xFFFF) is None
    assert rx.receive(event(1), 200_000) == DigitReceived("1", 200_000)


def test_timestamps_wrap() -> None:
    rx = TelephoneEventReceiver()
    assert rx.receive(event(2), 2**32 + 5) == DigitReceived("2", 5)


def test_info_bodies() -> None:
    assert parse_info("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n") == InfoDigit("5", 160)
    assert parse_info("Application/DTMF-Relay; x=y", b"signal = #\nduration=250") == InfoDigit("#", 250)
    assert parse_info("application/dtmf-relay", b"Signal=10") == InfoDigit("*", None)
    assert parse_info("application/dtmf", b"7\r\n") == InfoDigit("7", None)
    assert parse_info("application/dtmf", b"d") == InfoDigit("D", None)
    for content_type, body in [
        ("application/dtmf-relay", b"Duration=160"),
        ("application/dtmf-relay", b"Signal=55"),
        ("application/dtmf-relay", b"Signal=5\r\nDuration=-3"),
        ("application/dtmf-relay", b"nonsense"),
        ("application/dtmf", b"12"),
        ("application/sdp", b"v=0"),
        ("application/dtmf", b"\xff"),
    ]:
        with pytest.raises(DtmfError):
            parse_info(content_type, body)


@given(st.binary(max_size=64), st.integers(-(2**40), 2**40))
def test_random_payloads_raise_only_dtmf_error(payload: bytes, timestamp: int) -> None:
    rx = TelephoneEventReceiver()
    try:
        rx.receive(payload, timestamp)
        parse_telephone_event(payload)
    except DtmfError:
        assert len(payload) < 4


@given(st.sampled_from(["application/dtmf-relay", "application/dtmf", "text/plain", ""]), st.binary(max_size=80))
def test_random_info_bodies_raise_only_dtmf_error(content_type: str, body: bytes) -> None:
    try:
        got = parse_info(content_type, body)
    except DtmfError:
        return
    assert got.digit in "0123456789*#ABCD" and len(got.digit) == 1


@given(st.text(max_size=80))
def test_random_relay_text_raises_only_dtmf_error(text: str) -> None:
    with contextlib.suppress(DtmfError):
        parse_info("application/dtmf-relay", text.encode())


def test_gather_max_digits() -> None:
    g = Gather(max_digits=3, timeout_s=5)
    g.start(0.0)
    assert g.deadline() == 5.0
    assert g.digit("1", 1.0) is None and g.deadline() == 6.0
    assert g.digit("2", 2.0) is None
    assert g.digit("3", 3.0) == GatherResult("123", "max_digits")
    assert g.deadline() is None and g.digit("4", 3.5) is None


def test_gather_finish_on_key_is_not_a_digit_and_may_end_empty() -> None:
    g = Gather()
    g.start(0.0)
    assert g.digit("4", 1.0) is None
    assert g.digit("#", 1.5) == GatherResult("4", "finish_on_key")
    g = Gather(finish_on_key="*")
    g.start(0.0)
    assert g.digit("*", 0.5) == GatherResult("", "finish_on_key")
    g = Gather(finish_on_key="", max_digits=2)
    g.start(0.0)
    assert g.digit("#", 0.5) is None and g.digit("1", 0.6) == GatherResult("#1", "max_digits")


def test_gather_timeouts() -> None:
    g = Gather(timeout_s=5)
    g.start(10.0)
    assert g.tick(14.9) is None
    assert g.tick(15.0) == GatherResult("", "timeout")
    g = Gather(timeout_s=5, inter_digit_timeout_s=2)
    g.start(0.0)
    assert g.digit("9", 4.0) is None and g.deadline() == 6.0
    assert g.digit("8", 6.5) == GatherResult("9", "timeout")  # the key came after the deadline
    g = Gather()
    assert g.digit("1", 0.0) is None and g.deadline() == 5.0  # a key before start() starts the clock
    with pytest.raises(DtmfError):
        g.digit("x", 1.0)
    with pytest.raises(ValueError):
        Gather(max_digits=0)
    with pytest.raises(ValueError):
        Gather(finish_on_key="##")
