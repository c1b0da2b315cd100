"""Hostile SIP for the fuzz tests (issue 21): real messages from shared/corpora/sip, mutated as broken or hostile
peers do — byte flips, truncation, duplicated or dropped header lines, huge/negative/non-ASCII
Content-Length, CR/LF/NUL injected into a header, non-UTF-8 octets, numbers `int` cannot read."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.conftest import CORPORA

SIP = CORPORA / "sip"

# a well-formed request of our own, so that the mutations have something to work on without the corpus
BASE = (
    b"OPTIONS sip:telgate@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKq\r\n"
    b"From: <sip:pbx@127.0.0.1>;tag=1\r\nTo: <sip:telgate@127.0.0.1>\r\nCall-ID: stray\r\n"
    b"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)


def corpus() -> list[bytes]:
    """BASE, then every RFC 4475 torture message and real PBX trace beside the checkout (none when absent)."""
    files = sorted((SIP / "rfc4475").glob("*.dat")) + sorted((SIP / "traces").rglob("*.sip"))
    return [BASE] + [p.read_bytes() for p in files if p.is_file()]


CORPUS = corpus()
KINDS = ("flip", "truncate", "duplicate", "length", "crlf", "binary", "insert", "drop")
LENGTHS = (b"99999999999999999999", b"-1", b"1" * 5000, b"65536", b"\xc2\xb2", b"")
INJECTED = (b"\r", b"\n", b"\r\nX-Evil: 1", b"\x00", b"\n\n", b"\r\r")
NON_UTF8 = (b"\xff\xfe", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80", b"\x00\x7f")
INSERTED = (b"CSeq: \xc2\xb2 OPTIONS", b"Session-Expires: " + b"9" * 30, b"Reason: Q.850;cause=" + b"9" * 5000)


@st.composite
def mutated(draw: st.DrawFn, messages: list[bytes] | None = None) -> bytes:
    """One message of `messages` (the corpus) with one to four mutations."""
    data = bytearray(draw(st.sampled_from(messages or CORPUS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(KINDS))
        lines = bytes(data).split(b"\r\n")
        if kind == "flip" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif kind == "duplicate" and len(lines) > 2:
            at = draw(st.integers(1, len(lines) - 1))
            lines.insert(at, lines[at])
            data = bytearray(b"\r\n".join(lines))
        elif kind == "length" and len(lines) > 1:
            value = draw(st.sampled_from(LENGTHS))
            kept = [line for line in lines if not line.lower().startswith((b"content-length:", b"l:"))]
            kept.insert(1, b"Content-Length: " + value)
            data = bytearray(b"\r\n".join(kept))
        elif kind == "crlf" and len(lines) > 2:
            at = draw(st.integers(1, len(lines) - 1))
            lines[at] = lines[at] + draw(st.sampled_from(INJECTED)) + lines[at][:8]
            data = bytearray(b"\r\n".join(lines))
        elif kind == "binary":
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.sampled_from(NON_UTF8))
        elif kind == "insert" and len(lines) > 2:
            lines.insert(draw(st.integers(1, len(lines) - 1)), draw(st.sampled_from(INSERTED)))
            data = bytearray(b"\r\n".join(lines))
        elif kind == "drop" and len(lines) > 2:
            del lines[draw(st.integers(1, len(lines) - 1))]
            data = bytearray(b"\r\n".join(lines))
    return bytes(data)


def hostile() -> st.SearchStrategy[bytes]:
    """Mutated real messages, random octets, and random text as UTF-8."""
    return st.one_of(mutated(), st.binary(max_size=2048), st.text(max_size=512).map(lambda t: t.encode("utf-8")))


def status_of(reply: bytes) -> int:
    """The status of a reply the gateway sent, which must be one response on the wire: a status line and
    header lines with no bare CR or LF among them (what it copies from a bad request may still be odd, but
    it is contained in its own line)."""
    head, sep, _ = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert sep and all(b"\r" not in line and b"\n" not in line for line in lines), reply[:200]
    assert lines[0][:8] == b"SIP/2.0 " and lines[0][8:11].isdigit() and lines[-1].startswith(b"Content-Length: ")
    return int(lines[0][8:11])
