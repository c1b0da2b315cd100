"""The one request builder (sip/requests.py): the common headers in one order, tags, routes, the body's
Content-Type, the INVITE transaction's CANCEL/ACK, digest answers, and the header-value checks on its path."""

from __future__ import annotations

import pytest

from sip.message import Headers, HeaderValueError, Request, Response, parse
from sip.requests import authorization, build, challenge, in_transaction, tagged


def invite() -> Request:
    return build(
        "INVITE",
        "sip:420601234567@pbx",
        via="SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport",
        from_=tagged("<sip:telgate@pbx>", "f1"),
        to="<sip:420601234567@pbx>",
        call_id="call-1",
        number=3,
        route=["<sip:p1;lr>", "<sip:p2;lr>"],
        headers=[("Contact", "<sip:telgate@10.0.0.1:5060>"), ("User-Agent", "telgate")],
        body=b"v=0\r\n",
    )


def test_the_common_headers_come_first_in_one_order_then_the_methods_then_content_type() -> None:
    req = invite()
    wire = req.encode()
    assert wire.startswith(b"INVITE sip:420601234567@pbx SIP/2.0\r\n")
    names = [line.split(b":", 1)[0] for line in wire.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]]
    assert names == [
        b"Via",
        b"Max-Forwards",
        b"Route",
        b"Route",
        b"From",
        b"To",
        b"Call-ID",
        b"CSeq",
        b"Contact",
        b"User-Agent",
        b"Content-Type",
        b"Content-Length",
    ]
    back = parse(wire)
    assert back.headers.get("cseq") == "3 INVITE" and back.headers.get("from") == "<sip:telgate@pbx>;tag=f1"
    assert back.headers.get("max-forwards") == "70" and back.headers.get("content-type") == "application/sdp"
    assert back.body == b"v=0\r\n"


def test_no_body_no_content_type_and_no_tag_no_tag_parameter() -> None:
    req = build(
        "OPTIONS",
        "sip:pbx",
        via="SIP/2.0/UDP h:1;branch=z9hG4bKx",
        from_="<sip:a@b>",
        to="<sip:pbx>",
        call_id="k",
        number=1,
    )
    assert req.headers.get("content-type") is None and tagged("<sip:pbx>", None) == "<sip:pbx>"


def _options(
    via: str = "SIP/2.0/UDP h:1;branch=z9hG4bKx",
    from_: str = "<sip:a@b>",
    to: str = "<sip:c@d>",
    call_id: str = "k",
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    return build("OPTIONS", "sip:pbx", via=via, from_=from_, to=to, call_id=call_id, number=1, headers=headers)


@pytest.mark.parametrize("field", ["via", "from_", "to", "call_id"])
def test_a_control_character_or_a_bad_name_is_refused_on_the_builders_path(field: str) -> None:
    with pytest.raises(HeaderValueError):
        _options(**{field: "x\r\nX-Injected: 1"})  # type: ignore[arg-type]  # one str field at a time
    with pytest.raises(HeaderValueError):
        _options(headers=(("Bad Name", "x"),))
    assert _options().encode().count(b"\r\n") == 9


def test_cancel_and_the_ack_of_a_non_2xx_stay_in_the_invites_transaction() -> None:
    inv = invite()
    cancel = in_transaction(inv, "CANCEL")
    ack = in_transaction(inv, "ACK", "<sip:420601234567@pbx>;tag=t9")
    for req, method in ((cancel, "CANCEL"), (ack, "ACK")):
        h = req.headers
        assert req.method == method and req.uri == "sip:420601234567@pbx" and req.body == b""
        assert h.get("via") == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport"  # the same branch
        assert h.get_all("route") == ["<sip:p1;lr>", "<sip:p2;lr>"] and h.get("cseq") == f"3 {method}"
        assert h.get("from") == "<sip:telgate@pbx>;tag=f1" and h.get("call-id") == "call-1"
    assert cancel.headers.get("to") == "<sip:420601234567@pbx>"
    assert ack.headers.get("to") == "<sip:420601234567@pbx>;tag=t9"


@pytest.mark.parametrize(
    ("status", "offered", "answer"),
    [(401, "WWW-Authenticate", "Authorization"), (407, "Proxy-Authenticate", "Proxy-Authorization")],
)
def test_a_challenge_is_answered_in_its_own_header(status: int, offered: str, answer: str) -> None:
    resp = Response(status, "Auth", Headers().with_(offered, 'Digest realm="pbx", nonce="n"'))
    name, value = authorization(challenge(resp), "u", "p", "REGISTER", "sip:pbx")
    assert name == answer and value.startswith('Digest username="u", realm="pbx", nonce="n", uri="sip:pbx"')
