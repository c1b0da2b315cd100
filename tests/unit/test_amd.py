"""sip/amd.py: verdicts with app_amd's parameters, machine ends (beep, silence), fax, lost and odd frames;
and bench/amd_baseline.py, app_amd's own algorithm, on the cases its rules name."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from bench.amd_baseline import AppAmdBaseline
from sip.amd import Amd, AmdEvent, AmdParams, AmdVerdict, MachineEnd
from sip.sdp import PCMA, PCMU
from tests.support import speech as S

GREETING = (
    "Hi, you have reached Jana. I'm not available to take your call right now. "
    "Please leave your name, number and a short message after the tone."
)


def run(amd: Amd | AppAmdBaseline, pcm: S.Pcm, loss: float = 0.0, seed: int = 0) -> list[AmdEvent]:
    events: list[AmdEvent] = []
    last = 0
    for t, frame in S.packets(pcm, loss, seed):
        events += amd.feed(frame, t)
        last = t + 20
    return events + amd.finish(last)


def test_defaults_are_app_amds() -> None:
    p = AmdParams()
    assert (p.initial_silence, p.greeting, p.after_greeting_silence, p.total_analysis_time) == (2500, 1500, 800, 5000)
    assert (p.min_word_length, p.between_words_silence, p.maximum_number_of_words) == (100, 50, 2)
    assert (p.maximum_word_length, p.silence_threshold) == (5000, 256)
    assert dataclasses.replace(p, greeting=2000).greeting == 2000


def test_a_person_saying_hello() -> None:
    hello = S.at_level(S.speak("Hello?", "en-gb"), -20)
    pcm = S.g711_round_trip(S.add_noise(S.concat(S.silence(300), hello, S.silence(3000)), 20, 1), PCMU)
    events = run(Amd(), pcm, loss=0.02, seed=4)
    assert len(events) == 1
    v = events[0]
    assert isinstance(v, AmdVerdict) and (v.answered_by, v.cause) == ("human", "HUMAN")
    speech_end = 300 + hello.size // 8
    assert speech_end + 800 <= v.ms <= speech_end + 800 + 200


def test_a_greeting_then_a_beep() -> None:
    greeting = S.at_level(S.speak(GREETING, "en-us", 170), -18)
    beep_end = 400 + greeting.size // 8 + 700 + 500
    pcm = S.concat(S.silence(400), greeting, S.silence(700), S.beep(1000, 500), S.silence(3000))
    events = run(Amd(), S.g711_round_trip(pcm, PCMA), loss=0.01, seed=2)
    v, end = events
    assert isinstance(v, AmdVerdict) and v.answered_by == "machine_start" and v.cause == "LONGGREETING"
    assert 1500 < v.ms < 3000
    assert isinstance(end, MachineEnd) and end.answered_by == "machine_end_beep"
    assert end.beep_end_ms is not None and abs(end.beep_end_ms - beep_end) <= 20
    assert 0 <= end.t_ms - beep_end <= 300


def test_a_greeting_then_silence() -> None:
    greeting = S.speak(GREETING, "de", 190)
    pcm = S.concat(S.silence(200), greeting, S.silence(4000))
    v, end = run(Amd(), pcm)
    assert isinstance(v, AmdVerdict) and v.answered_by == "machine_start"
    assert isinstance(end, MachineEnd) and end.answered_by == "machine_end_silence"
    assert end.t_ms == 200 + greeting.size // 8 + 2500


def test_dead_air_fax_and_ringback() -> None:
    assert run(Amd(), S.silence(6000)) == [
        AmdVerdict("machine_start", "INITIALSILENCE", 2500),
        MachineEnd("machine_end_silence", 5000),
    ]
    events = run(Amd(), S.concat(S.silence(300), S.ced(3000, ansam=True)))
    assert events == [AmdVerdict("fax", "CED", 700)]
    (v,) = run(Amd(), S.add_noise(S.ringback(8000), 20, 3))
    assert isinstance(v, AmdVerdict) and (v.answered_by, v.cause, v.ms) == ("unknown", "TOOLONG", 5000)


def test_no_audio_at_all_and_the_deadline() -> None:
    assert Amd().finish(1000) == [AmdVerdict("unknown", "NOAUDIODATA", 1000)]
    amd = Amd(answered_ms=10_000)
    assert amd.deadline() == 12_500
    assert amd.tick(12_000) == []
    # no packet at all: a media path we do not hear, not a machine's dead air (a person is not hung up on)
    assert amd.tick(12_500) == [AmdVerdict("unknown", "NOAUDIODATA", 2500)]
    assert amd.deadline() is None and amd.feed(S.silence(20), 20_000) == []
    # dead air that arrives as RTP silence is a machine (app_amd's INITIALSILENCE)
    amd = Amd(answered_ms=10_000)
    assert amd.feed(S.silence(20), 10_000) == []
    assert amd.tick(12_500) == [AmdVerdict("machine_start", "INITIALSILENCE", 2500)]
    assert amd.deadline() is not None  # now waiting for the machine's end
    assert amd.finish(13_000) == [MachineEnd("machine_end_other", 13_000)]


def test_lost_late_and_odd_frames() -> None:
    amd = Amd()
    hello = S.at_level(S.speak("Yes, speaking."), -18)
    packets = S.packets(S.concat(S.silence(200), hello, S.silence(2000)))
    events: list[AmdEvent] = []
    for i, (t, frame) in enumerate(packets):
        if i % 7 == 3:
            events += amd.feed(frame[:80].tobytes() + b"\x00", t)  # half a frame and an odd byte
        elif i % 11 == 5:
            continue  # lost
        else:
            events += amd.feed(frame, t)
        events += amd.feed(frame, t - 40)  # a late duplicate: ignored
    assert [(e.answered_by, e.cause) for e in events if isinstance(e, AmdVerdict)] == [("human", "HUMAN")]
    amd = Amd()
    assert amd.feed(b"", 0) == [] and amd.feed(np.zeros(0, dtype=np.int16), 20) == []
    assert amd.feed(S.silence(20), 3000) == [AmdVerdict("machine_start", "INITIALSILENCE", 2500)]


def test_app_amds_energy_rule_as_an_option() -> None:
    pcm = S.concat(S.silence(300), S.at_level(S.speak("Hello?"), -16), S.silence(3000))
    (v,) = run(Amd(AmdParams(vad="energy")), pcm)
    assert isinstance(v, AmdVerdict) and v.answered_by == "human"


def test_the_baseline_follows_app_amd() -> None:
    (v,) = run(AppAmdBaseline(), S.silence(4000))
    assert isinstance(v, AmdVerdict) and (v.answered_by, v.cause, v.ms) == ("machine_start", "INITIALSILENCE", 2500)
    (v,) = run(AppAmdBaseline(), S.tone(500, 3000, -20))
    assert isinstance(v, AmdVerdict) and (v.cause, v.ms) == ("LONGGREETING", 1500)
    words = S.concat(*[S.concat(S.tone(300, 200, -20), S.silence(100)) for _ in range(3)], S.silence(2000))
    (v,) = run(AppAmdBaseline(), words)
    assert isinstance(v, AmdVerdict) and v.cause == "MAXWORDS"  # the second word: maximum_number_of_words 2
    (v,) = run(AppAmdBaseline(), S.concat(S.tone(300, 300, -20), S.silence(2000)))
    assert isinstance(v, AmdVerdict) and (v.answered_by, v.ms) == ("human", 1100)
    assert AppAmdBaseline().finish(300) == [AmdVerdict("unknown", "NOAUDIODATA", 300)]


@given(
    st.lists(
        st.tuples(st.binary(max_size=400), st.integers(-60, 400), st.sampled_from(["bytes", "array", "tone"])),
        max_size=60,
    ),
    st.integers(0, 10_000),
)
def test_random_frames_never_crash_and_events_stay_in_order(frames: list[tuple[bytes, int, str]], end: int) -> None:
    amd, t, events = Amd(), 0, []
    for raw, step, kind in frames:
        t += step
        if kind == "bytes":
            events += amd.feed(raw, t)
        elif kind == "array":
            events += amd.feed(np.frombuffer(raw[: len(raw) // 2 * 2], dtype=np.int16), t)
        else:
            events += amd.feed(S.tone(1000 + step, 20, -10), t)
        deadline = amd.deadline()
        if deadline is not None and deadline <= t:
            events += amd.tick(t)
    events += amd.finish(t + end)
    verdicts = [e for e in events if isinstance(e, AmdVerdict)]
    ends = [e for e in events if isinstance(e, MachineEnd)]
    assert len(verdicts) == 1 and isinstance(events[0], AmdVerdict)
    assert len(ends) == (1 if verdicts[0].answered_by == "machine_start" else 0)


def test_a_beep_whose_audio_stops_ends_when_the_far_end_goes_quiet() -> None:
    """A machine that stops sending RTP right after its beep: no frame ever ends the beep, the deadline does."""
    greeting = S.at_level(S.speak(GREETING, "en-us", 170), -18)
    greeting = greeting[: greeting.size // 160 * 160]  # whole frames: the last frame is all beep
    pcm = S.concat(S.silence(400), greeting, S.silence(700), S.beep(1000, 400))[:-320]  # cut in the beep
    amd, events, last = Amd(), [], 0
    for t, frame in S.packets(pcm, 0.0, 0):
        events += amd.feed(frame, t)
        last = t + 20
    assert [type(e) for e in events] == [AmdVerdict]  # the beep is still sounding as far as frames tell
    deadline = amd.deadline()
    assert deadline is not None and deadline <= last + 100
    (end,) = amd.tick(deadline)
    assert isinstance(end, MachineEnd) and end.answered_by == "machine_end_beep"
    assert end.beep_end_ms == last and end.t_ms - last <= 100
