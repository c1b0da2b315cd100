"""sip/tones.py: beeps (steady single tones, not ringback or speech), CED and in-band DTMF."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.sdp import PCMA, PCMU
from sip.tones import (
    FRAME,
    BeepDetector,
    BeepEnded,
    BeepStarted,
    CedDetector,
    DtmfDetector,
    as_frame,
    measure,
)
from tests.support import speech as S


def beeps(pcm: S.Pcm, loss: float = 0.0) -> list[BeepStarted | BeepEnded]:
    det = BeepDetector()
    out: list[BeepStarted | BeepEnded] = []
    for t, frame in S.packets(pcm, loss, seed=3):
        out += det.feed(frame, t)
    return out + det.flush()


@pytest.mark.parametrize("hz", [440, 850, 1000, 1400, 1800])
@pytest.mark.parametrize("codec", [PCMU, PCMA])
def test_a_beep_is_found_with_its_start_and_end(hz: int, codec: int) -> None:
    pcm = S.g711_round_trip(S.add_noise(S.concat(S.silence(500), S.beep(hz, 400), S.silence(500)), 20, 1), codec)
    events = beeps(pcm)
    assert [type(e) for e in events] == [BeepStarted, BeepEnded]
    end = events[1]
    assert isinstance(end, BeepEnded)
    assert abs(end.hz - hz) < 15
    assert abs(end.start_ms - 500) <= 20 and abs(end.end_ms - 900) <= 20


def test_a_lost_packet_inside_a_beep_does_not_split_it() -> None:
    pcm = S.concat(S.silence(200), S.beep(1000, 600), S.silence(200))
    packets = [p for p in S.packets(pcm) if p[0] != 500]
    det = BeepDetector()
    events = [e for t, f in packets for e in det.feed(f, t)]
    assert [type(e) for e in events] == [BeepStarted, BeepEnded]


def test_ringback_dial_tone_and_short_blips_are_not_beeps() -> None:
    assert beeps(S.ringback(6000)) == []
    assert beeps(S.tone((350, 440), 2000)) == []  # North American dial tone
    assert beeps(S.concat(S.beep(1000, 60), S.silence(200))) == []  # shorter than 100 ms
    assert beeps(S.beep(300, 500)) == [] and beeps(S.beep(2500, 500)) == []  # out of 400-2,000 Hz


def test_speech_is_not_a_beep() -> None:
    for voice in ("en-us", "de"):
        pcm = S.speak("Please leave a message after the tone. Hellooo, oh no.", voice, 140)
        assert beeps(pcm) == []


def test_ced_plain_and_ansam_but_not_a_beep_or_speech() -> None:
    for pcm in (S.ced(1000), S.ced(1000, ansam=True), S.add_noise(S.ced(1000), 15, 2)):
        det = CedDetector()
        found = [c for t, f in S.packets(pcm) if (c := det.feed(f, t)) is not None]
        assert len(found) == 1 and found[0].t_ms <= 460
    for pcm in (S.beep(1000, 1000), S.speak("Hello, this is Jana.")):
        det = CedDetector()
        assert all(det.feed(f, t) is None for t, f in S.packets(pcm))


def dtmf(pcm: S.Pcm, drop: frozenset[int] = frozenset()) -> list[tuple[str, int]]:
    det = DtmfDetector()
    return [(d.digit, d.start_ms) for t, f in S.packets(pcm) if t not in drop for d in det.feed(f, t)]


def test_every_key_once_with_its_start() -> None:
    keys = "123A456B789C*0#D"
    got = dtmf(S.g711_round_trip(S.add_noise(S.dtmf(keys, 80, 80), 20, 5), PCMA))
    assert "".join(d for d, _ in got) == keys
    assert [t for _, t in got] == [160 * i for i in range(16)]


def test_a_long_press_with_a_lost_packet_is_one_digit_and_a_repeat_is_two() -> None:
    assert dtmf(S.dtmf("5", 400, 100), drop=frozenset({200})) == [("5", 0)]
    assert [d for d, _ in dtmf(S.dtmf("55", 80, 60))] == ["5", "5"]


def test_dtmf_checks_twist_and_refuses_speech() -> None:
    row, col = S.tone(770, 200, -10), S.tone(1336, 200, -24)  # the column tone 14 dB down
    assert dtmf(S.concat(row + col, S.silence(100))) == []
    assert dtmf(S.concat(S.tone(770, 200, -10), S.silence(100))) == []  # a single tone
    assert dtmf(S.speak("One two three, four five six. Hello.", "en-us")) == []


def test_odd_frames_are_cut_or_padded() -> None:
    assert as_frame(b"\x01").shape == (FRAME,)
    assert as_frame(np.ones(500, dtype=np.int16)).shape == (FRAME,)
    assert measure(as_frame(b"")).purity == 0.0


@given(st.lists(st.binary(max_size=400), max_size=30), st.lists(st.integers(-100, 100), max_size=30))
def test_random_frames_never_crash_a_detector(frames: list[bytes], steps: list[int]) -> None:
    beep, ced, keys, t = BeepDetector(), CedDetector(), DtmfDetector(), 0
    for frame, step in zip(frames, steps, strict=False):
        t += step
        pcm = as_frame(frame)
        beep.feed(pcm, t)
        ced.feed(pcm, t)
        keys.feed(pcm, t)
    beep.flush()
