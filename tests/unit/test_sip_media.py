"""SDP offer/answer and the RTP prompt path: G.711 against the reference encoder, packetising, WAV input."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip import rtp, sdp


def test_offer_lists_pcmu_pcma_and_telephone_event_on_our_port() -> None:
    body = sdp.offer("192.0.2.5", 40002, 7).decode()
    assert "m=audio 40002 RTP/AVP 0 8 101\r\n" in body and "c=IN IP4 192.0.2.5\r\n" in body
    assert "a=rtpmap:101 telephone-event/8000" in body and body.endswith("\r\n")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"v=0\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\n", sdp.Media("10.1.1.1", 4000, 0)),
        (b"v=0\nc=IN IP4 10.1.1.1\nm=audio 4000 RTP/AVP 18 8\nc=IN IP4 10.2.2.2\n", sdp.Media("10.2.2.2", 4000, 8)),
        (b"v=0\r\nc=IN IP4 10.1.1.1\r\nm=audio 0 RTP/AVP 0\r\n", None),  # refused stream
        (b"v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n", None),  # hold
        (b"v=0\r\nc=IN IP4 10.1.1.1\r\nm=audio 4000 RTP/AVP 18\r\n", None),  # no codec of ours
        (b"v=0\r\nc=IN IP4 10.1.1.1\r\nm=video 4000 RTP/AVP 96\r\n", None),
        (b"", None),
        (b"\xff\xfe", None),
        (b"m=audio x RTP/AVP 0\r\n", None),
    ],
)
def test_answers_are_read_for_host_port_and_codec(body: bytes, expected: sdp.Media | None) -> None:
    assert sdp.parse_answer(body) == expected


@given(st.binary(max_size=600))
def test_any_answer_body_never_raises(body: bytes) -> None:
    sdp.parse_answer(body)


KNOWN = [(0, 0xFF, 0xD5), (-1, 0x7E, 0x55), (32767, 0x80, 0xAA), (-32768, 0x00, 0x2A), (1000, 0xCE, 0xFA)]


@pytest.mark.parametrize(("sample", "ulaw", "alaw"), KNOWN)
def test_g711_known_values(sample: int, ulaw: int, alaw: int) -> None:
    pcm = struct.pack("<h", sample)
    assert rtp.encode(pcm, sdp.PCMU) == bytes([ulaw]) and rtp.encode(pcm, sdp.PCMA) == bytes([alaw])


def test_g711_matches_the_reference_encoder_on_every_sample() -> None:
    audioop = pytest.importorskip("audioop")  # CPython's g711 (gone in 3.13, where KNOWN still holds)
    pcm = struct.pack("<65536h", *range(-32768, 32768))
    assert rtp.encode(pcm, sdp.PCMU) == audioop.lin2ulaw(pcm, 2)
    assert rtp.encode(pcm, sdp.PCMA) == audioop.lin2alaw(pcm, 2)


def test_packets_are_20ms_with_growing_sequence_and_timestamp() -> None:
    stream = rtp.RtpStream(ssrc=0x1234, payload_type=sdp.PCMU, sequence=65535, timestamp=10)
    packets = stream.packets(b"\x01" * 400)  # 2.5 frames
    assert [len(p) for p in packets] == [172, 172, 172]
    headers = [rtp.parse_header(p) for p in packets]
    assert headers == [(0, 65535, 10, 0x1234), (0, 0, 170, 0x1234), (0, 1, 330, 0x1234)]
    assert packets[0][1] & 0x80 and not packets[1][1] & 0x80  # marker on the first packet only
    assert packets[2].endswith(b"\xff" * 80)  # the last frame padded with µ-law silence
    assert rtp.parse_header(b"\x00" * 12) is None and rtp.parse_header(b"\x80") is None


def _wav(path: Path, rate: int = 8000, channels: int = 1, width: int = 2, frames: int = 800) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x00" * frames * channels * width)
    return path


def test_wav_prompts_must_be_8khz_mono_16bit(tmp_path: Path) -> None:
    assert len(rtp.load_wav(_wav(tmp_path / "ok.wav"))) == 1600
    with pytest.raises(rtp.PromptError, match="8000 Hz mono 16-bit"):
        rtp.load_wav(_wav(tmp_path / "cd.wav", rate=44100, channels=2))
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not a wave")
    with pytest.raises(rtp.PromptError, match="not a PCM WAV"):
        rtp.load_wav(tmp_path / "junk.wav")
    with pytest.raises(rtp.PromptError, match=r"junk2\.wav"):
        rtp.load_wav(tmp_path / "junk2.wav")


def test_received_rtp_goes_to_its_call_by_address_and_latches_a_symmetric_sender() -> None:
    from sip.media import MediaEndpoint

    media = MediaEndpoint()
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    media.attach(("192.0.2.1", 4000), got["a"].append)
    media.attach(("192.0.2.1", 4002), got["b"].append)
    media.datagram_received(b"to-a", ("192.0.2.1", 4000))
    media.datagram_received(b"from-b-elsewhere", ("192.0.2.1", 5550))  # b's far end sends from another port
    media.datagram_received(b"b-again", ("192.0.2.1", 5550))
    media.datagram_received(b"stray", ("198.51.100.7", 4000))
    assert got == {"a": [b"to-a"], "b": [b"from-b-elsewhere", b"b-again"]}
    assert media.stray_packets == 1
    media.detach(("192.0.2.1", 4002))
    media.datagram_received(b"after", ("192.0.2.1", 5550))
    assert got["b"] == [b"from-b-elsewhere", b"b-again"] and media.stray_packets == 2
