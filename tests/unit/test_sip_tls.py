"""What TLS changes in the messages (sans-IO): sips: URIs where RFC 3261 §26.2 and RFC 5630 put them, Via
SIP/2.0/TLS with RFC 5923's alias, no retransmissions on a reliable transport; and what it leaves alone."""

from __future__ import annotations

import itertools
from dataclasses import replace

from sip.call import Call, Send, UacConfig, respond
from sip.message import Request, Response, parse
from sip.register import Registration
from sip.ua import UserAgent

TLS = UacConfig(
    local_host="127.0.0.1",
    local_port=5061,
    pbx="pbx.example:5061",
    transport="TLS",
    username="telgate",
    password="pw",
)
_n = itertools.count()


def token() -> str:
    return f"t{next(_n)}"


def invite_of(cfg: UacConfig) -> tuple[Call, Request]:
    call = Call(cfg, "+420601234567", f"c{next(_n)}", 30.0, b"v=0\r\n", token=token)
    sent = [e.message for e in call.start(0.0) if isinstance(e, Send)]
    assert len(sent) == 1 and isinstance(sent[0], Request)
    return call, sent[0]


def test_an_invite_over_tls_uses_sips_uris_and_a_tls_via_with_alias() -> None:
    call, invite = invite_of(TLS)
    assert invite.uri == "sips:420601234567@pbx.example:5061"
    assert invite.headers.get("to") == "<sips:420601234567@pbx.example:5061>"
    assert invite.headers.get("contact") == "<sips:telgate@127.0.0.1:5061>"  # RFC 5630 §3.1.1: no transport=tls
    via = invite.headers.get("via") or ""
    assert via.startswith("SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK") and via.endswith(";rport;alias")
    assert (invite.headers.get("from") or "").startswith("<sip:telgate@pbx.example>")  # From says who, not how
    assert call.get_timer() == 30.0  # reliable: no Timer A retransmission before the ring timeout


def test_the_digest_retry_keeps_the_sips_request_uri() -> None:
    call, invite = invite_of(TLS)
    challenge = respond(invite, 407, "Proxy Authentication Required", to_tag="p")
    challenge = Response(
        407, challenge.reason, challenge.headers.with_("Proxy-Authenticate", 'Digest realm="pbx", nonce="n"')
    )
    again = [e.message for e in call.receive(parse(challenge.encode()), 0.1) if isinstance(e, Send)]
    retry = next(m for m in again if isinstance(m, Request) and m.method == "INVITE")
    assert retry.uri == invite.uri
    assert 'uri="sips:420601234567@pbx.example:5061"' in (retry.headers.get("proxy-authorization") or "")


def test_tls_with_sip_uris_for_a_pbx_that_routes_no_sips() -> None:
    _, invite = invite_of(replace(TLS, tls_scheme="sip"))
    assert invite.uri == "sip:420601234567@pbx.example:5061;transport=tls"
    assert invite.headers.get("contact") == "<sip:telgate@127.0.0.1:5061;transport=tls>"
    assert (invite.headers.get("via") or "").startswith("SIP/2.0/TLS ") and "alias" in (invite.headers.get("via") or "")


def test_register_and_options_over_tls() -> None:
    reg = Registration(TLS, expires_s=300, token=token)
    first = reg.handle_timer(0.0)[0]
    assert first.uri == "sips:pbx.example" and first.headers.get("contact") == "<sips:telgate@127.0.0.1:5061>"
    challenge = respond(first, 401, "Unauthorized", to_tag="x")
    challenge = Response(
        401, challenge.reason, challenge.headers.with_("WWW-Authenticate", 'Digest realm="r", nonce="n"')
    )
    second = reg.receive(parse(challenge.encode()), 0.1)[0]  # type: ignore[arg-type]
    assert 'uri="sips:pbx.example"' in (second.headers.get("authorization") or "")
    ua = UserAgent(TLS, ("10.0.0.5", 5061), token)
    ping = parse(ua.ping(0.0)[0].data)
    assert isinstance(ping, Request) and ping.uri == "sips:pbx.example:5061"
    assert ping.headers.get("to") == "<sips:pbx.example:5061>"


def test_udp_and_tcp_messages_are_unchanged() -> None:
    for transport in ("UDP", "TCP"):
        _, invite = invite_of(replace(TLS, transport=transport, local_port=5070, pbx="pbx.example:5060"))
        assert invite.uri == "sip:420601234567@pbx.example:5060"
        assert invite.headers.get("contact") == f"<sip:telgate@127.0.0.1:5070;transport={transport.lower()}>"
        assert (invite.headers.get("via") or "").endswith(";rport")
