"""sip/listen.py: one call's ears — AMD over received RTP, the greeting's end, and a gather fed by RFC 4733,
SIP INFO and in-band tones, the same press told twice counted once. Audio rendered by tests/support/speech.py,
sent as RTP packets with the arrival times a far end sending in real time gives them."""

from __future__ import annotations

import struct

import numpy as np

from sip import rtp
from sip.amd import AmdParams
from sip.dtmf import Gather
from sip.listen import CallListener, Gathered, GreetingEnded, Heard, Pressed, Verdict
from tests.support import speech

ANSWERED = 100.0


def _send(listener: CallListener, pcm: np.ndarray, payload_type: int = 0, start_s: float = 0.0) -> list[Heard]:
    """`pcm` as 20 ms RTP packets arriving in real time from `start_s` after the answer, with every tick due
    between them."""
    stream = rtp.RtpStream(ssrc=7, payload_type=payload_type, sequence=1000, timestamp=round(start_s * 8000))
    heard: list[Heard] = []
    for i, packet in enumerate(stream.packets(rtp.encode(pcm.astype("<i2").tobytes(), payload_type))):
        now = ANSWERED + start_s + i * 0.02
        heard += _until(listener, now)
        heard += listener.packet(packet, now)
    return heard


def _until(listener: CallListener, now: float) -> list[Heard]:
    heard: list[Heard] = []
    while (at := listener.deadline()) is not None and at <= now:
        heard += listener.tick(at)
    return heard


def test_a_short_hello_is_a_person() -> None:
    ear = CallListener(ANSWERED)
    ear.listen_amd(AmdParams(), until_end=False)
    heard = _send(ear, speech.concat(speech.silence(300), speech.speak("Hello?"), speech.silence(1500)))
    verdicts = [h.verdict for h in heard if isinstance(h, Verdict)]
    assert [(v.answered_by, v.cause) for v in verdicts] == [("human", "HUMAN")]
    assert not ear.active  # no more listening after a person's verdict


def test_a_greeting_then_a_beep_ends_at_the_beep() -> None:
    greeting = speech.speak("Hi, you have reached the voicemail of John. Please leave a message after the tone.")
    audio = speech.concat(
        speech.silence(200), greeting, speech.silence(400), speech.beep(1000, 500), speech.silence(1500)
    )
    ear = CallListener(ANSWERED)
    ear.listen_amd(AmdParams(), until_end=True)
    heard = _send(ear, audio, payload_type=8)
    verdict = next(h.verdict for h in heard if isinstance(h, Verdict))
    assert verdict.answered_by == "machine_start"
    (end,) = [h for h in heard if isinstance(h, GreetingEnded)]
    beep_end_ms = round(200 + greeting.size / 8 + 400 + 500)
    assert end.end.answered_by == "machine_end_beep" and end.end.beep_end_ms is not None
    assert abs(end.end.beep_end_ms - beep_end_ms) <= 40
    assert end.verdict == verdict


def _event(digit: int, timestamp: int, seq: int, end: bool, duration: int) -> bytes:
    header = struct.pack("!BBHII", 0x80, 101, seq, timestamp, 9)
    return header + bytes([digit, (0x80 if end else 0) | 10]) + struct.pack("!H", duration)


def test_a_press_told_by_rfc4733_and_info_counts_once() -> None:
    ear = CallListener(ANSWERED)
    ear.gather(Gather(max_digits=2, finish_on_key="#", timeout_s=5), ANSWERED + 1.0)
    heard: list[Heard] = []
    now = ANSWERED + 1.2
    for i, (end, dur) in enumerate([(False, 160), (False, 320), (True, 480), (True, 480), (True, 480)]):
        heard += ear.packet(_event(1, 8000, 1 + i, end, dur), now + i * 0.02)
    heard += ear.info("1", now + 0.05)  # the same press, also by INFO
    heard += _until(ear, now + 0.5)
    assert [h for h in heard if isinstance(h, Pressed)] == [Pressed("1", "rfc4733")]
    heard += ear.info("9", now + 1.0)  # another press
    gathered = [h for h in heard if isinstance(h, Gathered)]
    assert len(gathered) == 1 and gathered[0].result.digits == "19" and gathered[0].result.reason == "max_digits"
    assert gathered[0].via == "rfc4733"


def test_in_band_digits_and_the_timeout() -> None:
    ear = CallListener(ANSWERED)
    ear.gather(Gather(max_digits=4, finish_on_key="#", timeout_s=2), ANSWERED)
    heard = _send(ear, speech.concat(speech.silence(200), speech.dtmf("95", 80, 80), speech.silence(300)))
    heard += _until(ear, ANSWERED + 10)
    assert [h for h in heard if isinstance(h, Pressed)] == [Pressed("9", "inband"), Pressed("5", "inband")]
    (gathered,) = [h for h in heard if isinstance(h, Gathered)]
    assert gathered.result.digits == "95" and gathered.result.reason == "timeout" and gathered.via == "inband"
    assert not ear.active


def test_nothing_pressed_times_out_empty() -> None:
    ear = CallListener(ANSWERED)
    ear.gather(Gather(max_digits=1, timeout_s=5), ANSWERED + 2)
    assert ear.deadline() == ANSWERED + 7
    (gathered,) = _until(ear, ANSWERED + 8)
    assert isinstance(gathered, Gathered) and gathered.result.digits == "" and gathered.via is None


def test_digits_before_a_gather_and_other_ptimes() -> None:
    ear = CallListener(ANSWERED)
    assert ear.info("1", ANSWERED + 1) == []  # no gather: not counted
    ear.listen_amd(AmdParams(), until_end=False)
    stream = rtp.RtpStream(ssrc=3, payload_type=0)
    pcm = speech.concat(speech.silence(400), speech.speak("Hello?"), speech.silence(1500))
    encoded = rtp.encode(pcm.astype("<i2").tobytes(), 0)
    heard: list[Heard] = []
    for i in range(0, len(encoded), 240):  # 30 ms packets
        now = ANSWERED + i / 8000
        heard += _until(ear, now)
        heard += ear.packet(stream.packet(encoded[i : i + 240]), now)
    assert [h.verdict.answered_by for h in heard if isinstance(h, Verdict)] == ["human"]
