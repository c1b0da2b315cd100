"""The SIP codec against RFC 4475's torture messages and real PBX traces (shared/corpora/sip)."""

from __future__ import annotations

import contextlib
import csv
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip.message import Headers, ParseError, Request, Response, parse, reason_q850, tag, uri_of
from tests.conftest import CORPORA

SIP = CORPORA / "sip"

# Our handling of each RFC 4475 message: "parse" or the status of the ParseError. Where the RFC lets an
# element be liberal ("may", "acceptable to", "liberal"), we accept what we can still use safely.
POLICY = {
    "wsinv": "parse",
    "intmeth": "parse",
    "esc01": "parse",
    "escnull": "parse",
    "esc02": "parse",
    "lwsdisp": "parse",
    "longreq": "parse",
    "dblreq": "parse",
    "semiuri": "parse",
    "transports": "parse",
    "mpart01": "parse",
    "unreason": "parse",
    "noreason": "parse",
    "badinv01": 400,
    "clerr": 400,
    "ncl": 400,
    "scalar02": 400,
    "scalarlg": 400,
    "quotbal": 400,
    "ltgtruri": 400,
    "lwsruri": 400,
    "lwsstart": 400,
    "trws": 400,
    "escruri": "parse",
    "baddate": "parse",
    "regbadct": "parse",
    "badaspec": "parse",
    "baddn": 400,
    "badvers": 505,
    "mismatch01": 400,
    "mismatch02": 400,
    "bigcode": 400,
    "badbranch": "parse",
    "insuf": 400,
    "unkscm": "parse",
    "novelsc": "parse",
    "unksm2": "parse",
    "bext01": "parse",
    "invut": "parse",
    "regaut01": "parse",
    "multi01": 400,
    "mcl01": 400,
    "bcast": "parse",
    "zeromf": "parse",
    "cparam01": "parse",
    "cparam02": "parse",
    "regescrt": "parse",
    "sdp01": "parse",
    "inv2543": "parse",
}


def torture() -> list[tuple[str, str]]:
    path = SIP / "rfc4475" / "EXPECTED.tsv"
    if not path.exists():
        return []
    with path.open() as fh:
        return [(row["name"], row["rfc_class"]) for row in csv.DictReader(fh, delimiter="\t")]


@pytest.mark.parametrize(
    ("name", "rfc_class"),
    torture()
    or [pytest.param("none", "", marks=pytest.mark.skip(reason="shared/corpora/sip is not beside this checkout"))],
)
def test_rfc4475(name: str, rfc_class: str) -> None:
    data = (SIP / "rfc4475" / f"{name}.dat").read_bytes()
    expected = POLICY[name]
    if rfc_class == "valid":
        assert expected == "parse", f"{name} is valid in RFC 4475"
    if expected == "parse":
        message = parse(data)
        assert isinstance(message, Request | Response)
        reparsed = parse(message.encode())  # what we write, we read back the same
        assert reparsed.headers.get("call-id") == message.headers.get("call-id") and reparsed.body == message.body
    else:
        with pytest.raises(ParseError) as info:
            parse(data)
        assert info.value.status == expected


def test_dblreq_keeps_only_the_first_message() -> None:
    path = SIP / "rfc4475" / "dblreq.dat"
    if not path.exists():
        pytest.skip("corpus absent")
    message = parse(path.read_bytes())
    assert isinstance(message, Request) and message.method == "REGISTER" and message.body == b""


def traces() -> list[Path]:
    folder = SIP / "traces"
    return sorted(p for p in folder.rglob("*.sip")) if folder.is_dir() else []


@pytest.mark.parametrize(
    "path", traces() or [pytest.param(Path("none"), marks=pytest.mark.skip(reason="no corpus"))], ids=lambda p: p.name
)
def test_real_pbx_traces_parse(path: Path) -> None:
    if path.name.startswith("drachtio_"):  # Content-Length 2 bytes past the body (SOURCES.md): refused
        with pytest.raises(ParseError) as info:
            parse(path.read_bytes())
        assert info.value.status == 400
        return
    message = parse(path.read_bytes())
    assert message.headers.get("call-id")
    if isinstance(message, Response):
        assert 100 <= message.status <= 699


def test_bye_with_q850_reason_from_a_real_gateway() -> None:
    path = SIP / "traces" / "vyatta_cisco_06_BYE_reason_q850.sip"
    if not path.exists():
        pytest.skip("corpus absent")
    message = parse(path.read_bytes())
    assert isinstance(message, Request) and message.method == "BYE" and reason_q850(message) is not None


def test_tolerant_forms() -> None:
    raw = (
        b"SIP/2.0 486 Busy Here\n"
        b"v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=5060,SIP/2.0/UDP 10.0.0.2\n"
        b"f: <sip:a@x>;tag=1\nt :   <sip:b@y>\n ;tag=2\ni: abc\nCSeq: 1 INVITE\n"
        b'Reason: Q.850 ;cause=17;text="User busy"\n\n'
    )
    message = parse(raw)
    assert isinstance(message, Response) and message.status == 486 and message.reason == "Busy Here"
    assert len(message.headers.get_all("via")) == 2 and tag(message.headers.get("to")) == "2"
    assert reason_q850(message) == 17
    assert uri_of('"Bob" <sip:bob@example.com;transport=tcp>;tag=9') == "sip:bob@example.com;transport=tcp"


def test_encode_sets_content_length() -> None:
    req = Request(
        "OPTIONS",
        "sip:pbx",
        Headers()
        .with_("Via", "SIP/2.0/UDP h;branch=z9hG4bKx")
        .with_("From", "<sip:a@h>;tag=1")
        .with_("To", "<sip:pbx>")
        .with_("Call-ID", "c")
        .with_("CSeq", "1 OPTIONS"),
        b"hello",
    )
    wire = req.encode()
    back = parse(wire)
    assert b"Content-Length: 5\r\n\r\nhello" in wire and isinstance(back, Request)
    assert (back.method, back.uri, back.body, back.headers.without("content-length")) == (
        req.method,
        req.uri,
        req.body,
        req.headers,
    )


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    with contextlib.suppress(ParseError):
        parse(data)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"INVITE sip:a@b SIP/2.0",
                b"Via: SIP/2.0/UDP h;branch=z9hG4bK1",
                b"To: <sip:a@b>",
                b"From: <sip:c@d>;tag=1",
                b"Call-ID: x",
                b"CSeq: 1 INVITE",
                b"Content-Length: 3",
                b"l: 99",
                b" folded",
                b"\x00\xff",
                b"",
                b"SIP/2.0 200 OK",
            ]
        ),
        max_size=12,
    )
)
def test_shuffled_lines_never_crash(lines: list[bytes]) -> None:
    with contextlib.suppress(ParseError):
        parse(b"\r\n".join(lines) + b"\r\n\r\nabc")


def test_lf_only_trace_gets_its_crlf_body_back() -> None:
    path = SIP / "traces" / "kamailio_nmr_INVITE_xlite_proxyauth_rport.sip"
    if not path.exists():
        pytest.skip("corpus absent")
    message = parse(path.read_bytes())
    assert len(message.body) == 301 and message.body.startswith(b"v=0\r\n")
