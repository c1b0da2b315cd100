"""The UAC call core with an in-memory PBX and a fake clock: SPEC §6.1's flows, CANCEL rule, auth, races."""

from __future__ import annotations

import itertools

from sip.call import Answered, Call, Ended, EndKind, Media, Ringing, Send, Transferred, UacConfig, respond
from sip.message import Headers, Request, Response, parse

CFG = UacConfig(local_host="127.0.0.1", local_port=5070, pbx="127.0.0.1:5060", username="telgate", password="pw")
_counter = itertools.count()


def new_call(ring_timeout: float = 30.0) -> tuple[Call, Request]:
    call = Call(
        CFG, "+420601234567", f"c{next(_counter)}", ring_timeout, b"v=0\r\n", token=lambda: f"t{next(_counter)}"
    )
    events = call.start(0.0)
    invite = sent(events)[0]
    assert isinstance(invite, Request) and invite.method == "INVITE"
    return call, invite


def sent(events: list[object]) -> list[Request | Response]:
    return [e.message for e in events if isinstance(e, Send)]


def reply(req: Request, status: int, reason: str = "", to_tag: str = "pbx1", **extra: str) -> Response:
    resp = respond(req, status, reason, to_tag=to_tag if status > 100 else None)
    for name, value in extra.items():
        resp = Response(resp.status, resp.reason, resp.headers.with_(name.replace("_", "-"), value))
    return parse(resp.encode())  # type: ignore[return-value]  # through the wire, as the shell does


def ended(events: list[object]) -> Ended:
    found = [e for e in events if isinstance(e, Ended)]
    assert len(found) == 1, events
    return found[0]


def test_answer_then_remote_bye_with_duration() -> None:
    call, invite = new_call()
    assert Ringing(180, "Ringing", True) in call.receive(reply(invite, 180, "Ringing"), 0.3)
    ok = reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9:5062>", Record_Route="<sip:proxy;lr>")
    events = call.receive(ok, 1.0)
    assert Answered(200) in events
    ack = sent(events)[0]
    assert isinstance(ack, Request) and ack.method == "ACK" and ack.uri == "sip:bob@10.0.0.9:5062"
    assert ack.headers.get("route") == "<sip:proxy;lr>" and ack.headers.get("cseq") == "1 ACK"
    assert "tag=pbx1" in (ack.headers.get("to") or "")
    again = call.receive(ok, 1.5)  # the 2xx retransmitted: ACKed again, nothing else
    assert sent(again) == [ack] and not [e for e in again if not isinstance(e, Send)]
    bye = Request(
        "BYE",
        "sip:telgate@127.0.0.1:5070",
        ok.headers.without("contact").replace("CSeq", "1 BYE").replace("Reason", "Q.850;cause=16"),
    )
    events = call.receive(bye, 13.0)
    assert sent(events)[0].status == 200  # type: ignore[union-attr]
    end = ended(events)
    assert end.kind is EndKind.REMOTE_HANGUP and end.duration_s == 12.0 and end.q850 == 16 and end.answered


def test_we_hang_up_with_bye_in_the_dialog() -> None:
    call, invite = new_call()
    call.receive(reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>"), 1.0)
    bye = sent(call.hangup(31.0))[0]
    assert isinstance(bye, Request) and bye.method == "BYE" and bye.headers.get("cseq") == "2 BYE"
    end = ended(call.receive(reply(bye, 200, "OK"), 31.1))
    assert end.kind is EndKind.LOCAL_HANGUP and end.duration_s == 30.0


def test_busy_is_acked_and_rejected_with_q850() -> None:
    call, invite = new_call()
    events = call.receive(reply(invite, 486, "Busy Here", Reason="Q.850;cause=17"), 0.5)
    ack = sent(events)[0]
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.headers.get("via") == invite.headers.get("via")  # same branch: inside the transaction
    end = ended(events)
    assert (end.kind, end.status, end.reason, end.q850) == (EndKind.REJECTED, 486, "Busy Here", 17)


def test_ring_timeout_cancels_only_after_a_provisional() -> None:
    call, invite = new_call(ring_timeout=5.0)
    call.receive(reply(invite, 183, "Session Progress"), 0.2)
    assert call.get_timer() == 5.0  # the 1xx stopped Timer A: the ring timeout is next
    events = call.handle_timer(5.0)
    cancel = sent(events)[0]
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert cancel.headers.get("via") == invite.headers.get("via") and cancel.headers.get("cseq") == "1 CANCEL"
    call.receive(reply(cancel, 200, "OK"), 5.1)
    end = ended(call.receive(reply(invite, 487, "Request Terminated"), 5.2))
    assert end.kind is EndKind.UNREACHABLE and end.status == 487


def test_no_provisional_leaves_it_to_timer_b() -> None:
    call, _invite = new_call(ring_timeout=5.0)
    events: list[object] = []
    now = 0.0
    while not call.ended:
        now = call.get_timer() or now
        events += call.handle_timer(now)
    assert not [m for m in sent(events) if isinstance(m, Request) and m.method == "CANCEL"]
    end = ended(events)
    assert end.kind is EndKind.FAILED and now == 32.0


def test_digest_retry_once_with_cseq_plus_one_and_new_branch() -> None:
    call, invite = new_call()
    challenge = reply(
        invite,
        407,
        "Proxy Authentication Required",
        Proxy_Authenticate='Digest realm="pbx", nonce="n1", algorithm=SHA-256, qop="auth"',
    )
    events = call.receive(challenge, 0.1)
    ack, invite2 = sent(events)
    assert isinstance(invite2, Request) and invite2.method == "INVITE"
    assert ack.method == "ACK" and invite2.headers.get("cseq") == "2 INVITE"  # type: ignore[union-attr]
    assert invite2.headers.get("via") != invite.headers.get("via")
    assert (invite2.headers.get("proxy-authorization") or "").startswith('Digest username="telgate"')
    assert "algorithm=SHA-256" in (invite2.headers.get("proxy-authorization") or "")
    end = ended(
        call.receive(reply(invite2, 401, "Unauthorized", WWW_Authenticate='Digest realm="pbx", nonce="n2"'), 0.2)
    )
    assert end.kind is EndKind.FAILED and end.status == 401  # a second challenge is a failure


def test_200_after_our_cancel_is_acked_then_byed() -> None:
    call, invite = new_call()
    call.receive(reply(invite, 180, "Ringing"), 0.1)
    cancel = sent(call.cancel(0.5))[0]
    assert cancel.method == "CANCEL"  # type: ignore[union-attr]
    events = call.receive(reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>"), 0.6)
    methods = [m.method for m in sent(events) if isinstance(m, Request)]
    assert methods == ["ACK", "BYE"]
    end = ended(events)
    assert end.kind is EndKind.UNREACHABLE and end.status == 200


def test_cancel_before_any_provisional_waits_for_one() -> None:
    call, invite = new_call()
    assert sent(call.cancel(0.1)) == []  # RFC 3261 §9.1: not yet
    events = call.receive(reply(invite, 180, "Ringing"), 0.3)
    assert [m.method for m in sent(events) if isinstance(m, Request)] == ["CANCEL"]


def test_in_dialog_options_and_unknown_methods() -> None:
    call, invite = new_call()
    ok = reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>")
    call.receive(ok, 1.0)
    options = Request("OPTIONS", "sip:telgate@127.0.0.1", ok.headers.replace("CSeq", "5 OPTIONS"))
    assert sent(call.receive(options, 2.0))[0].status == 200  # type: ignore[union-attr]
    message = Request("MESSAGE", "sip:telgate@127.0.0.1", ok.headers.replace("CSeq", "6 MESSAGE"))
    assert sent(call.receive(message, 2.0))[0].status == 501  # type: ignore[union-attr]


def test_headers_helper_is_used() -> None:
    assert Headers().with_("v", "x").get("via") == "x"


def _answered(call: Call, invite: Request) -> Response:
    ok = reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>")
    call.receive(ok, 1.0)
    return ok


def _notify(ok: Response, number: int, frag: bytes, state: str = "terminated;reason=noresource") -> Request:
    h = (
        ok.headers.without("contact")
        .replace("CSeq", f"{number} NOTIFY")
        .replace("Event", "refer")
        .replace("Subscription-State", state)
        .replace("Content-Type", "message/sipfrag")
    )
    return parse(Request("NOTIFY", "sip:telgate@127.0.0.1:5070", h, frag).encode())  # type: ignore[return-value]


def test_blind_transfer_follows_the_notify_sipfrag() -> None:
    call, invite = new_call()
    ok = _answered(call, invite)
    refer = sent(call.transfer("sip:queue@pbx", 2.0))[0]
    assert isinstance(refer, Request) and refer.method == "REFER" and refer.headers.get("cseq") == "2 REFER"
    assert refer.headers.get("refer-to") == "<sip:queue@pbx>" and refer.uri == "sip:bob@10.0.0.9"
    assert call.transfer("sip:other@pbx", 2.1) == []  # one transfer per call
    assert not [e for e in call.receive(reply(refer, 202, "Accepted"), 2.1) if not isinstance(e, Send)]
    trying = call.receive(_notify(ok, 2, b"SIP/2.0 100 Trying\r\n", "active;expires=60"), 2.2)
    assert [m.status for m in sent(trying)] == [200]  # type: ignore[union-attr]
    assert not [e for e in trying if not isinstance(e, Send)]
    done = call.receive(_notify(ok, 3, b"SIP/2.0 200 OK\r\n"), 3.0)
    assert [m.status for m in sent(done)] == [200]  # type: ignore[union-attr]
    assert Transferred(True, 200, "OK") in done
    again = call.receive(_notify(ok, 3, b"SIP/2.0 200 OK\r\n"), 3.1)  # retransmitted NOTIFY: answered, not re-told
    assert not [e for e in again if isinstance(e, Transferred)]


def test_transfer_refused_or_failed_is_told_once() -> None:
    call, invite = new_call()
    _answered(call, invite)
    refer = sent(call.transfer("sip:queue@pbx", 2.0))[0]
    assert Transferred(False, 403, "REFER refused: Forbidden") in call.receive(reply(refer, 403, "Forbidden"), 2.1)
    call, invite = new_call()
    ok = _answered(call, invite)
    refer = sent(call.transfer("sip:queue@pbx", 2.0))[0]
    call.receive(reply(refer, 202, "Accepted"), 2.1)
    assert Transferred(False, 486, "Busy Here") in call.receive(_notify(ok, 2, b"SIP/2.0 486 Busy Here\r\n"), 2.5)


def test_refer_without_answer_times_out() -> None:
    call, invite = new_call()
    _answered(call, invite)
    call.transfer("sip:queue@pbx", 2.0)
    events: list[object] = []
    t = 2.0
    while (at := call.get_timer()) is not None and at < 100:
        t = at
        events += call.handle_timer(t)
    assert any(isinstance(e, Transferred) and not e.ok and "Timer F" in e.reason for e in events)
    assert abs(t - 34.0) < 1e-6  # Timer F = 64 x T1 after the REFER at 2.0


def test_answer_carries_the_far_end_media() -> None:
    call, invite = new_call()
    sdp = b"v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 30000 RTP/AVP 8 101\r\n"
    ok = reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>", Content_Type="application/sdp")
    ok = parse(Response(200, "OK", ok.headers, sdp).encode())  # type: ignore[assignment]
    answered = [e for e in call.receive(ok, 1.0) if isinstance(e, Answered)]
    assert answered == [Answered(200, Media("10.0.0.9", 30000, 8))]


def test_timer_t1_is_configurable() -> None:
    from dataclasses import replace

    call = Call(replace(CFG, t1=0.05), "+420601234567", "fast", 30.0, token=lambda: f"t{next(_counter)}")
    call.start(0.0)
    t = 0.0
    events: list[object] = []
    while not call.ended and (at := call.get_timer()) is not None:
        t = at
        events += call.handle_timer(t)
    assert ended(events).kind is EndKind.FAILED and abs(t - 3.2) < 1e-6  # Timer B = 64 x T1


def test_a_call_may_ring_longer_than_timer_b() -> None:
    """Found by bench/voice with 5,000 calls ringing: Timer B must not end a call that has had a 180."""
    call, invite = new_call(ring_timeout=120.0)
    call.receive(reply(invite, 180, "Ringing"), 0.2)
    events: list[object] = []
    while (at := call.get_timer()) is not None and at < 119.0:
        events += call.handle_timer(at)
    assert not call.ended and not [e for e in events if isinstance(e, Ended)]
    cancel = sent(call.handle_timer(120.0))
    assert [m.method for m in cancel if isinstance(m, Request)] == ["CANCEL"]


def test_trunk_format_caller_id_and_asserted_identity_on_every_request_of_the_dialog() -> None:
    from dataclasses import replace

    from sip.identity import Caller

    cfg = replace(CFG, dial_format="national", dial_prefix="9", user_phone=True, assert_identity=True)
    call = Call(
        cfg, "+442079460958", "trunk", 30.0, token=lambda: f"t{next(_counter)}", caller=Caller("+4930123456", "Acme")
    )
    invite = sent(call.start(0.0))[0]
    assert isinstance(invite, Request)
    assert invite.uri == "sip:902079460958@127.0.0.1:5060;user=phone"
    assert invite.headers.get("to") == "<sip:902079460958@127.0.0.1:5060;user=phone>"
    assert (invite.headers.get("from") or "").startswith('"Acme" <sip:030123456@127.0.0.1;user=phone>;tag=')
    assert invite.headers.get("p-asserted-identity") == '"Acme" <sip:030123456@127.0.0.1;user=phone>'
    assert invite.headers.get("privacy") is None
    events = call.receive(reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>"), 1.0)
    ack = sent(events)[0]
    assert isinstance(ack, Request) and ack.headers.get("from") == invite.headers.get("from")
    bye = sent(call.hangup(2.0))[0]
    assert isinstance(bye, Request) and bye.method == "BYE" and bye.headers.get("from") == invite.headers.get("from")


def test_a_withheld_caller_id_is_anonymous_in_from_and_still_asserted() -> None:
    from dataclasses import replace

    from sip.identity import Caller

    for assert_identity in (True, False):
        cfg = replace(CFG, dial_format="+e164", assert_identity=assert_identity)
        caller = Caller("+420212345678", withheld=True)
        call = Call(
            cfg, "+420601234567", f"w{assert_identity}", 30.0, token=lambda: f"t{next(_counter)}", caller=caller
        )
        invite = sent(call.start(0.0))[0]
        assert isinstance(invite, Request) and invite.uri == "sip:+420601234567@127.0.0.1:5060"
        assert (invite.headers.get("from") or "").startswith('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=')
        assert invite.headers.get("privacy") == "id"
        pai = invite.headers.get("p-asserted-identity")
        assert pai == ("<sip:+420212345678@127.0.0.1>" if assert_identity else None)
        events = call.receive(reply(invite, 407, "Proxy Auth", Proxy_Authenticate='Digest realm="r", nonce="n"'), 0.1)
        again = next(m for m in sent(events) if isinstance(m, Request) and m.method == "INVITE")
        assert again.headers.get("privacy") == "id" and again.headers.get("p-asserted-identity") == pai


def test_without_a_caller_id_the_invite_is_as_before() -> None:
    _call, invite = new_call()
    assert invite.uri == "sip:420601234567@127.0.0.1:5060" and invite.headers.get("to") == f"<{invite.uri}>"
    assert (invite.headers.get("from") or "").startswith("<sip:telgate@127.0.0.1>;tag=")
    assert invite.headers.get("p-asserted-identity") is None and invite.headers.get("privacy") is None
