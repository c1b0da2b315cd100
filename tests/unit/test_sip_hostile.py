"""Hostile input at the SIP layer (issue 21): every byte string the transport receives becomes a message or a
named refusal, and nothing the layer is given can put a CR, LF or other control character into a header.

The fuzzers mutate real messages (shared/corpora/sip, when it is beside the checkout) as well as generating
their own; each asserts the contract itself — `parse` gives a Request, a Response or a `ParseError`; the UA
gives outputs; the framer gives messages or sets `error` — never another exception.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip.call import Ended, EndKind, Transferred, UacConfig, respond
from sip.identity import Caller
from sip.message import (
    MAX_MESSAGE,
    Headers,
    HeaderValueError,
    ParseError,
    Request,
    Response,
    SipError,
    parse,
)
from sip.transport import FramingError, StreamFramer
from sip.ua import CallUpdate, Datagram, UserAgent
from sip.uri import check_target, check_text, check_user
from tests.conftest import CORPORA
from tests.support import sipfuzz

CFG = UacConfig(local_host="127.0.0.1", local_port=5070, pbx="127.0.0.1:5060")
PBX = ("127.0.0.1", 5060)
SIP = CORPORA / "sip"

CORPUS = sipfuzz.CORPUS
BASE = sipfuzz.BASE


def _ua() -> UserAgent:
    n = itertools.count()
    return UserAgent(CFG, PBX, lambda: f"t{next(n)}")


HOSTILE = sipfuzz.hostile()
_status = sipfuzz.status_of


def _parse_or_refusal(data: bytes) -> Request | Response | ParseError:
    try:
        return parse(data)
    except ParseError as exc:
        return exc


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(HOSTILE)
def test_parse_is_total_and_what_it_reads_it_can_write(data: bytes) -> None:
    """Any bytes: a message or a ParseError with a status a UAS may answer; a message read re-encodes
    (nothing read from the wire makes our builders refuse it) and reads back the same."""
    result = _parse_or_refusal(data)
    if isinstance(result, ParseError):
        assert result.status in (400, 505, 513) and isinstance(result, SipError)
        return
    again = parse(result.encode())
    assert type(again) is type(result) and again.headers.get("call-id") == result.headers.get("call-id")
    assert again.body == result.body


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(HOSTILE)
def test_the_ua_answers_or_drops_every_datagram(data: bytes) -> None:
    """The UA's receive is total: outputs, never an exception; every reply is a response we can read, and a
    request the codec refused is answered 400/505/513 or dropped."""
    ua = _ua()
    ua.place("+420601234567", 30.0, b"", 0.0)
    out = ua.receive(data, PBX, 0.1)
    statuses = [_status(o.data) for o in out if isinstance(o, Datagram)]
    if isinstance(_parse_or_refusal(data), ParseError):
        assert ua.stats["malformed_request"] + ua.stats["malformed_response"] == 1
        assert set(statuses) <= {400, 505, 513} and len(statuses) <= 1


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(HOSTILE, min_size=1, max_size=4), st.data())
def test_the_stream_framer_frames_or_refuses(chunks: list[bytes], data: st.DataObject) -> None:
    framer = StreamFramer()
    stream = b"".join(chunks)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    pieces = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)])]
    framed: list[bytes] = []
    for piece in pieces:
        framed += framer.feed(piece)
    assert all(len(m) <= MAX_MESSAGE for m in framed)
    assert framer.error is None or isinstance(framer.error, FramingError)
    if framer.error is not None:
        assert framer.feed(BASE) == []  # a broken stream takes nothing more: its connection is closed


def test_the_framer_closes_garbage_and_bad_lengths_at_once() -> None:
    for stream, why in (
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n", "not a SIP start line"),  # a TLS hello on the TCP port
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not a SIP start line"),
        (BASE.replace(b"Content-Length: 0", b"Content-Length: 99999999999"), "not a number in range"),
        (BASE.replace(b"Content-Length: 0", b"Content-Length: 70000"), "over 64 KiB"),
        (BASE.replace(b"Content-Length: 0", b"Content-Length: -1"), "not a number"),
        (BASE.replace(b"Content-Length: 0", b"X-Length: 0"), "no Content-Length"),
        (BASE.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 4"), "Content-Length twice"),
        (b"A" * 9000, "no start line"),
    ):
        framer = StreamFramer()
        assert framer.feed(stream) == []
        assert framer.error is not None and why in str(framer.error), (stream[:30], framer.error)
    framer = StreamFramer()  # what was framed before the garbage still counts
    assert framer.feed(BASE + b"\r\n" + BASE.replace(b"\r\n", b"\n") + b"\x00garbage\n") == [
        BASE,
        BASE.replace(b"\r\n", b"\n"),
    ]
    assert framer.error is not None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (BASE.replace(b"Call-ID: stray", b"Call-ID: st\rray"), None),  # a bare CR: nothing to copy safely
        (BASE.replace(b"Max-Forwards: 70", b"Max-Forwards: 7\x000"), 400),
        (BASE.replace(b"CSeq: 1 OPTIONS", b"CSeq: \xc2\xb2 OPTIONS"), 400),
        (BASE.replace(b"To: <sip:telgate@127.0.0.1>", b"To: <sip:telgate@127.0.0.1>\r\nTo: <sip:x@y>"), 400),
        (BASE.replace(b"SIP/2.0\r\n", b"SIP/7.0\r\n", 1), 505),
        (BASE.replace(b"Content-Length: 0", b"Content-Length: 10"), 400),
        (BASE.replace(b"OPTIONS sip:", b"OPTIONS  sip:", 1), 400),
        (b"SIP/2.0 999 Bad\r\n" + BASE.split(b"\r\n", 1)[1], None),  # a malformed response: dropped
    ],
)
def test_malformed_requests_get_400_and_responses_are_dropped(data: bytes, status: int | None) -> None:
    ua = _ua()
    out = ua.receive(data, PBX, 0.0)
    assert [_status(o.data) for o in out if isinstance(o, Datagram)] == ([] if status is None else [status])
    assert ua.stats["malformed_request"] + ua.stats["malformed_response"] == 1


def test_rfc4475_through_the_ua() -> None:
    """The torture messages at the UA: the invalid requests get 400/505, the invalid responses nothing."""
    if not (SIP / "rfc4475").is_dir():
        pytest.skip("shared/corpora/sip is not beside this checkout")
    expected = {"badvers": 505, "scalarlg": None, "bigcode": None, "ncl": 400, "clerr": 400, "mismatch01": 400}
    for name, status in expected.items():
        ua = _ua()
        out = ua.receive((SIP / "rfc4475" / f"{name}.dat").read_bytes(), PBX, 0.0)
        got = [_status(o.data) for o in out if isinstance(o, Datagram)]
        assert got == ([] if status is None else [status]), name
    intmeth = parse((SIP / "rfc4475" / "intmeth.dat").read_bytes())  # quoted-pair BEL/NUL/DEL: valid, and
    assert isinstance(intmeth, Request)
    assert parse(respond(intmeth, 501, "Not Implemented").encode())  # answered with its To copied


# -- building: nothing given becomes a header of its own ---------------------------------------------------


@pytest.mark.parametrize(
    "value", ["x\r\nX-Evil: 1", "x\n", "x\r", "x\x00", "x\x1b[2J", "\x7f", "\ud800", "x\r\n\r\nINVITE sip:a@b SIP/2.0"]
)
def test_headers_refuse_control_characters(value: str) -> None:
    with pytest.raises(HeaderValueError) as info:
        Headers().with_("Subject", value)
    assert isinstance(info.value, SipError)
    with pytest.raises(HeaderValueError):
        Headers().with_(value, "x")  # a header name is a token
    with pytest.raises(HeaderValueError):
        Request("OPTIONS", f"sip:{value}@h", Headers()).encode()


def test_headers_keep_what_the_grammar_allows() -> None:
    h = Headers().with_("To", '"a\\\x07b\tc \u00e9" <sip:a@b>').with_("X", "\udcff")  # quoted-pair, HTAB, UTF-8
    assert len(h.items) == 2


@pytest.mark.parametrize(
    ("target", "ok"),
    [
        ("sip:100@pbx", True),
        ("sip:agents@queue.example", True),
        ("sip:operator@127.0.0.1:5070;transport=tls", True),
        ("sips:op@[2001:db8::1]:5061", True),
        ("sip:pbx.example", True),
        ("tel:+420-601-234-567", True),
        ("tel:7042;phone-context=example.com", True),
        ("sip:100@pbx\r\nX-Evil: 1", False),
        ("sip:100@pbx\nX-Evil: 1", False),
        ("sip:100@pbx\x00", False),
        ("sip:a%0D%0AX-Evil:%201@b", False),
        ("sip:a@b?X-Evil=1", False),
        ("<sip:a@b>", False),
        ("sip:a@b>;x=<sip:c@d", False),
        ("sip:a b@c", False),
        ('sip:a@b;x="y"', False),
        ("sip:caf\u00e9@x", False),
        ("tel:7042", False),
        ("http://example.com", False),
        ("100", False),
        ("", False),
        ("sip:" + "a" * 600 + "@b", False),
    ],
)
def test_check_target(target: str, ok: bool) -> None:
    why = check_target(target)
    assert (why is None) is ok, why
    if not ok:
        assert isinstance(why, str) and why and why.isprintable()


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"\Asips?:[a-z0-9%;=?@&.:\r\n\x00-]{1,40}\Z"))
def test_an_accepted_target_is_one_header_on_the_wire(target: str) -> None:
    """Whatever `check_target` accepts becomes exactly one Refer-To carrying it; what it refuses is refused
    by the call too, and nothing is sent."""
    call_id, ua = _answered()
    out = ua.transfer(call_id, target, 2.0)
    refers = [m for m in (parse(o.data) for o in out if isinstance(o, Datagram)) if isinstance(m, Request)]
    if check_target(target) is None:
        (refer,) = refers
        assert refer.method == "REFER" and refer.headers.get_all("refer-to") == [f"<{target}>"]
        assert [n for n, _ in refer.headers.items].count("Refer-To") == 1
    else:
        assert [o.event for o in out if isinstance(o, CallUpdate)] == [
            Transferred(False, None, f"refused: transfer target: {check_target(target)}")
        ]
        assert refers == [] and len(out) == 1 and ua.stats["transfer_refused"] == 1


def _answered() -> tuple[str, UserAgent]:
    ua = _ua()
    call_id, out = ua.place("+420601234567", 30.0, b"", 0.0)
    invite = parse(next(o.data for o in out if isinstance(o, Datagram)))
    assert isinstance(invite, Request)
    ok = respond(invite, 200, "OK", to_tag="far")
    ua.receive(Response(200, "OK", ok.headers.with_("Contact", "<sip:far@127.0.0.1:5060>")).encode(), PBX, 1.0)
    return call_id, ua


def test_a_crlf_connect_to_sends_no_refer_and_fails_the_transfer() -> None:
    call_id, ua = _answered()
    out = ua.transfer(call_id, "sip:100@pbx\r\nX-Evil: 1", 2.0)
    assert not [o for o in out if isinstance(o, Datagram)]
    (update,) = out
    assert isinstance(update, CallUpdate) and isinstance(update.event, Transferred) and not update.event.ok
    assert "U+000D" in update.event.reason
    call = ua.calls[call_id]
    assert call.transfer_state is None  # unchanged: a good target may still be tried
    good = ua.transfer(call_id, "sip:100@pbx", 2.1)
    (refer,) = [parse(o.data) for o in good if isinstance(o, Datagram)]
    assert isinstance(refer, Request) and refer.headers.get("refer-to") == "<sip:100@pbx>"


@pytest.mark.parametrize(
    "caller",
    [
        Caller(name="Acme\r\nX-Evil: 1"),
        Caller(name="Acme\x00"),
        Caller(name="\ud800"),
        Caller(name="Acme\u2028Inc"),
        Caller(number="+420\r\n601"),
    ],
)
def test_a_caller_id_with_controls_fails_the_call_before_anything_is_sent(caller: Caller) -> None:
    ua = _ua()
    call_id, out = ua.place("+420601234567", 30.0, b"", 0.0, caller=caller)
    (update,) = out
    assert isinstance(update, CallUpdate) and isinstance(update.event, Ended)
    assert update.event.kind is EndKind.FAILED and (update.event.reason or "").startswith("refused: ")
    assert call_id not in ua.calls and ua.dialogs() == 0 and ua.stats["place_refused"] == 1


def test_a_number_that_is_not_a_uri_user_fails_the_call() -> None:
    ua = _ua()
    _, out = ua.place("100\r\nX-Evil: 1", 30.0, b"", 0.0)
    assert [type(o) for o in out] == [CallUpdate] and ua.dialogs() == 0
    _, ok = ua.place("Acme Name With Spaces".replace(" ", ""), 30.0, b"", 0.0)  # not E.164, still a user
    assert any(isinstance(o, Datagram) for o in ok)


def test_the_configuration_is_checked_too() -> None:
    for bad in ({"from_user": "tel gate"}, {"from_display": "A\nB"}, {"local_host": "h\r\nX: 1"}, {"pbx": ""}):
        with pytest.raises(HeaderValueError):
            UacConfig(**{"local_host": "127.0.0.1", "local_port": 5070, "pbx": "127.0.0.1:5060", **bad})  # type: ignore[arg-type]


def test_check_text_and_user() -> None:
    assert check_text("Acme Café ☎") is None
    assert check_text("a\x85b") is not None  # C1 NEL
    assert check_text("x" * 200) is not None
    assert check_user("420601234567") is None and check_user("+420601234567") is None
    assert check_user("9%23") is None and check_user("a%00") is not None and check_user("a@b") is not None
