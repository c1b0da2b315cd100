from __future__ import annotations

import itertools

from sip.call import UacConfig, respond
from sip.message import Response, parse
from sip.register import Registration

CFG = UacConfig(local_host="127.0.0.1", local_port=5070, pbx="pbx.example:5060", username="telgate", password="pw")


def test_register_with_digest_then_refresh_at_80_percent() -> None:
    n = itertools.count()
    reg = Registration(CFG, expires_s=300, token=lambda: f"t{next(n)}")
    first = reg.handle_timer(0.0)[0]
    assert first.method == "REGISTER" and first.uri == "sip:pbx.example" and first.headers.get("expires") == "300"
    challenge = respond(first, 401, "Unauthorized", to_tag="x")
    challenge = Response(
        401, "Unauthorized", challenge.headers.with_("WWW-Authenticate", 'Digest realm="pbx", nonce="n", qop="auth"')
    )
    second = reg.receive(parse(challenge.encode()), 0.1)[0]  # type: ignore[arg-type]
    assert second.headers.get("cseq") == "2 REGISTER" and (second.headers.get("authorization") or "").startswith(
        "Digest"
    )
    ok = respond(second, 200, "OK", to_tag="x")
    ok = Response(200, "OK", ok.headers.with_("Contact", "<sip:telgate@127.0.0.1:5070>;expires=60"))
    assert reg.receive(ok, 0.2) == [] and reg.registered and reg.granted_s == 60
    assert reg.get_timer() == 5.2 and reg.handle_timer(5.2) == []  # Timer K of the finished REGISTER
    assert reg.get_timer() == 0.2 + 48.0
    refresh = reg.handle_timer(48.2)[0]
    assert refresh.headers.get("cseq") == "3 REGISTER" and refresh.headers.get("call-id") == first.headers.get(
        "call-id"
    )


def test_failure_retries_later() -> None:
    reg = Registration(CFG, expires_s=300, token=lambda: "t", retry_s=30)
    req = reg.handle_timer(0.0)[0]
    reg.receive(respond(req, 403, "Forbidden", to_tag="x"), 0.1)
    assert not reg.registered and reg.last_status == 403
    reg.handle_timer(5.1)  # Timer K
    assert reg.get_timer() == 30.1
