"""301/302 and RFC 4028 session timers in the call core, with an in-memory PBX and a fake clock."""

from __future__ import annotations

from sip.call import Answered, Call, Ended, EndKind, Phase, Redirected, Request, Response, Ringing, Send
from sip.message import cseq, parse
from tests.unit.test_sip_call import CFG, ended, new_call, reply, sent

SDP = b"v=0\r\n"  # what new_call offers


def _requests(events: list[object], method: str | None = None) -> list[Request]:
    return [m for m in sent(events) if isinstance(m, Request) and (method is None or m.method == method)]


def _branch(req: Request) -> str:
    return (req.headers.get("via") or "").split("branch=")[1].split(";")[0]


# -- 301/302 ---------------------------------------------------------------------------------------


def test_302_is_followed_once_to_its_contact_as_the_same_attempt() -> None:
    call, invite = new_call()
    moved = reply(invite, 302, "Moved Temporarily", Contact="<sip:420777000111@10.0.0.7:5060>;q=0.5")
    events = call.receive(moved, 0.2)
    ack, second = _requests(events)
    assert ack.method == "ACK" and _branch(ack) == _branch(invite)  # the 302 ACKed inside its transaction
    assert second.method == "INVITE" and second.uri == "sip:420777000111@10.0.0.7:5060"
    assert second.headers.get("call-id") == invite.headers.get("call-id")  # RFC 3261 §8.1.3.4: RECOMMENDED
    assert second.headers.get("from") == invite.headers.get("from")
    assert second.headers.get("to") == invite.headers.get("to")
    assert second.headers.get("cseq") == "2 INVITE" and _branch(second) != _branch(invite)
    assert second.body == invite.body
    assert Redirected(302, "sip:420777000111@10.0.0.7:5060") in events
    assert call.phase is Phase.INVITING and not call.ended
    assert [e for e in call.receive(reply(second, 180, "Ringing"), 0.3) if isinstance(e, Ringing)]
    answered = call.receive(reply(second, 200, "OK", Contact="<sip:bob@10.0.0.7>"), 1.0)
    assert Answered(200) in answered and _requests(answered, "ACK")[0].headers.get("cseq") == "2 ACK"


def test_the_best_q_contact_is_followed() -> None:
    call, invite = new_call()
    moved = reply(invite, 301, "Moved Permanently", Contact="<sip:a@10.0.0.1>;q=0.2, <sip:b@10.0.0.2>;q=0.9")
    assert _requests(call.receive(moved, 0.2), "INVITE")[0].uri == "sip:b@10.0.0.2"


def test_a_second_redirect_fails_the_call() -> None:
    call, invite = new_call()
    second = _requests(call.receive(reply(invite, 302, "Moved", Contact="<sip:b@10.0.0.2>"), 0.2), "INVITE")[0]
    end = ended(call.receive(reply(second, 302, "Moved", Contact="<sip:c@10.0.0.3>"), 0.4))
    assert end.kind is EndKind.FAILED and end.status == 302
    assert end.reason is not None and "second redirect" in end.reason and "sip:c@10.0.0.3" in end.reason


def test_a_redirect_back_to_a_uri_already_tried_is_a_loop() -> None:
    call, invite = new_call()
    loop = reply(invite, 302, "Moved", Contact=f"<{invite.uri};transport=udp>")  # the same target, a param
    events = call.receive(loop, 0.2)
    assert not _requests(events, "INVITE")
    end = ended(events)
    assert end.kind is EndKind.FAILED and end.status == 302 and "redirect loop" in (end.reason or "")


def test_a_redirect_without_a_sip_contact_fails() -> None:
    call, invite = new_call()
    end = ended(call.receive(reply(invite, 302, "Moved", Contact="<tel:+420777000111>"), 0.2))
    assert end.kind is EndKind.FAILED and "sip: Contact" in (end.reason or "")


def test_no_redirect_is_followed_once_a_cancel_was_asked() -> None:
    call, invite = new_call()
    call.cancel(0.1)
    events = call.receive(reply(invite, 302, "Moved", Contact="<sip:b@10.0.0.2>"), 0.2)
    assert not _requests(events, "INVITE") and ended(events).kind is EndKind.FAILED


def test_the_redirect_target_may_challenge_once_again() -> None:
    call, invite = new_call()
    call.receive(reply(invite, 407, "Proxy Auth", Proxy_Authenticate='Digest realm="pbx", nonce="n1"'), 0.1)
    authed = call._invite
    assert authed is not None and authed.headers.get("proxy-authorization")
    moved = call.receive(reply(authed, 302, "Moved", Contact="<sip:b@10.0.0.2>"), 0.2)
    third = _requests(moved, "INVITE")[0]
    assert third.headers.get("proxy-authorization") is None and third.headers.get("cseq") == "3 INVITE"
    challenge = reply(third, 401, "Unauthorized", WWW_Authenticate='Digest realm="b", nonce="n2"')
    fourth = _requests(call.receive(challenge, 0.3), "INVITE")[0]
    assert 'uri="sip:b@10.0.0.2"' in (fourth.headers.get("authorization") or "")


# -- 422 ---------------------------------------------------------------------------------------------


def test_every_invite_offers_session_timers() -> None:
    _call, invite = new_call()
    assert "timer" in invite.headers.get_all("supported")
    assert invite.headers.get("session-expires") == "1800" and invite.headers.get("min-se") is None


def test_422_is_answered_once_with_the_min_se_asked() -> None:
    call, invite = new_call()
    events = call.receive(reply(invite, 422, "Session Interval Too Small", Min_SE="3600"), 0.1)
    ack, again = _requests(events)
    assert ack.method == "ACK" and again.headers.get("cseq") == "2 INVITE"
    assert again.headers.get("session-expires") == "3600" and again.headers.get("min-se") == "3600"
    assert again.headers.get("call-id") == invite.headers.get("call-id") and _branch(again) != _branch(invite)
    end = ended(call.receive(reply(again, 422, "Session Interval Too Small", Min_SE="7200"), 0.2))
    assert end.kind is EndKind.FAILED and end.status == 422 and "second 422" in (end.reason or "")


# -- session refreshes -------------------------------------------------------------------------------


class B2bua:
    """An in-memory B2BUA that answers with `Session-Expires: {interval};refresher={refresher}` and
    answers every refresh of ours the same way (or with `refresh_status`)."""

    def __init__(self, interval: int = 90, refresher: str = "uac", allow_update: bool = False) -> None:
        self.interval, self.refresher, self.allow_update = interval, refresher, allow_update
        self.refresh_status = 200
        self.refreshes: list[tuple[float, Request]] = []
        self.acks: list[Request] = []
        self.byes: list[Request] = []

    def headers(self) -> dict[str, str]:
        allow = "INVITE, ACK, BYE, CANCEL" + (", UPDATE" if self.allow_update else "")
        return {
            "Contact": "<sip:b2bua@10.0.0.5>",
            "Session_Expires": f"{self.interval};refresher={self.refresher}",
            "Require": "timer",
            "Allow": allow,
        }

    def answer(self, call: Call, invite: Request, now: float) -> Response:
        ok = reply(invite, 200, "OK", **self.headers())
        self.take(call.receive(ok, now), now)
        return ok

    def take(self, events: list[object], now: float) -> list[object]:
        """Answer what the call sent (retransmissions aside); return the call's other events."""
        others = [e for e in events if not isinstance(e, Send)]
        for e in events:
            if not isinstance(e, Send) or e.retransmission or not isinstance(e.message, Request):
                continue
            req = e.message
            if req.method == "ACK":
                self.acks.append(req)
            elif req.method == "BYE":
                self.byes.append(req)
            elif req.method in ("INVITE", "UPDATE") and "tag=" in (req.headers.get("to") or ""):
                self.refreshes.append((now, req))
                if self.refresh_status is not None:
                    extra = self.headers() if self.refresh_status < 300 else {}
                    answer = reply(req, self.refresh_status, "x", **extra)
                    others += self.take(call_receive(self.call, answer, now), now)
        return others

    call: Call


def call_receive(call: Call, message: Request | Response, now: float) -> list[object]:
    return list(call.receive(message, now))


def run_until(call: Call, pbx: B2bua, until: float) -> list[object]:
    events: list[object] = []
    while (at := call.get_timer()) is not None and at <= until:
        events += pbx.take(list(call.handle_timer(at)), at)
    return events


def test_refresher_uac_keeps_a_90_s_session_up_for_5_minutes_with_re_invites() -> None:
    call, invite = new_call()
    pbx = B2bua(90, "uac")
    pbx.call = call
    ok = pbx.answer(call, invite, 1.0)
    assert call.session is not None and call.session.we_refresh and call.get_timer() is not None
    events = run_until(call, pbx, 301.0)
    assert not [e for e in events if isinstance(e, Ended)] and call.phase is Phase.CONFIRMED
    times = [round(t, 3) for t, _ in pbx.refreshes]
    assert times == [46.0, 91.0, 136.0, 181.0, 226.0, 271.0]  # every 45 s, half of 90, from the answer
    for _, req in pbx.refreshes:
        assert req.method == "INVITE" and req.body == SDP  # the same SDP: no change to the session
        assert req.headers.get("session-expires") == "90;refresher=uac" and "timer" in req.headers.get_all("supported")
        assert req.uri == "sip:b2bua@10.0.0.5" and req.headers.get("call-id") == ok.headers.get("call-id")
    assert [cseq(r)[0] for _, r in pbx.refreshes] == [2, 3, 4, 5, 6, 7]
    assert [cseq(a)[0] for a in pbx.acks] == [1, 2, 3, 4, 5, 6, 7]  # the answer and every refresh ACKed
    bye = _requests(call.hangup(301.0), "BYE")[0]
    assert bye.headers.get("cseq") == "8 BYE"


def test_refresh_by_update_when_the_pbx_allows_it() -> None:
    call, invite = new_call()
    pbx = B2bua(90, "uac", allow_update=True)
    pbx.call = call
    pbx.answer(call, invite, 0.0)
    run_until(call, pbx, 100.0)
    assert [(t, r.method, r.body) for t, r in pbx.refreshes] == [(45.0, "UPDATE", b""), (90.0, "UPDATE", b"")]
    assert len(pbx.acks) == 1  # an UPDATE is not ACKed


def test_refresher_uas_is_answered_with_our_sdp_and_its_silence_ends_the_call() -> None:
    call, invite = new_call()
    pbx = B2bua(90, "uas")
    pbx.call = call
    ok = pbx.answer(call, invite, 0.0)
    assert call.session is not None and not call.session.we_refresh
    now = 0.0
    for n in range(6):  # the B2BUA refreshes every 45 s for 4.5 minutes
        now += 45.0
        assert not run_until(call, pbx, now)
        h = (
            ok.headers.without("contact")
            .replace("CSeq", f"{10 + n} INVITE")
            .replace("Session-Expires", "90;refresher=uac")
        )
        h = h.with_("Contact", "<sip:b2bua@10.0.0.5>").with_("Supported", "timer")
        refresh = parse(Request("INVITE", "sip:telgate@127.0.0.1:5070", h, b"v=0\r\no=b2bua 1 2\r\n").encode())
        answer = sent(call.receive(refresh, now))  # type: ignore[arg-type]
        assert len(answer) == 1 and isinstance(answer[0], Response) and answer[0].status == 200
        assert answer[0].body == SDP and answer[0].headers.get("content-type") == "application/sdp"
        assert answer[0].headers.get("session-expires") == "90;refresher=uac"
        assert "timer" in answer[0].headers.get_all("require")
    assert call.phase is Phase.CONFIRMED and now == 270.0
    # then it stops refreshing: we hang up min(32, 90/3) = 30 s before the session would expire
    events = run_until(call, pbx, now + 90)
    assert [r.headers.get("cseq") for r in pbx.byes] == ["2 BYE"]
    bye_at = call.closed_at
    assert bye_at == now + 60.0
    end = ended(call.receive(reply(pbx.byes[0], 200, "OK"), now + 60.1) + events)
    assert end.kind is EndKind.LOCAL_HANGUP and "the PBX did not refresh" in (end.reason or "")
    assert end.duration_s == 330.0


def _answered_uac(refresh_status: int | None) -> tuple[Call, B2bua]:
    call, invite = new_call()
    pbx = B2bua(90, "uac")
    pbx.call = call
    pbx.refresh_status = refresh_status if refresh_status is not None else 200
    pbx.answer(call, invite, 0.0)
    pbx.refresh_status = refresh_status  # type: ignore[assignment]
    return call, pbx


def test_a_refresh_answered_408_ends_the_call_with_bye() -> None:
    call, pbx = _answered_uac(408)
    events = run_until(call, pbx, 46.0)
    assert len(pbx.byes) == 1 and call.phase is Phase.CLOSING
    end = ended(events + call.receive(reply(pbx.byes[0], 200, "OK"), 46.0))
    assert end.kind is EndKind.LOCAL_HANGUP and end.status == 408
    assert end.reason is not None and end.reason.startswith("session refresh failed: 408")


def test_a_refresh_answered_481_ends_the_call_without_bye() -> None:
    call, pbx = _answered_uac(481)
    end = ended(run_until(call, pbx, 46.0))
    assert not pbx.byes and call.phase is Phase.ENDED
    assert end.kind is EndKind.LOCAL_HANGUP and end.status == 481 and "481" in (end.reason or "")


def test_a_refresh_never_answered_ends_the_call_with_bye() -> None:
    call, pbx = _answered_uac(None)  # the B2BUA is gone
    events = run_until(call, pbx, 200.0)
    assert len(pbx.refreshes) == 1 and len(pbx.byes) == 1  # the expiry guard (60 s) comes before Timer B
    assert call.closed_at == 60.0
    assert "session expired" in (ended(events + call.receive(reply(pbx.byes[0], 200, "OK"), 61.0)).reason or "")


def test_a_refresh_answered_422_is_sent_again_at_once_with_the_min_se() -> None:
    call, pbx = _answered_uac(None)
    run_until(call, pbx, 45.0)
    first = pbx.refreshes[0][1]
    events = call.receive(reply(first, 422, "Too Small", Min_SE="120"), 45.1)
    again = _requests(events, "INVITE")
    assert again and again[0].headers.get("session-expires") == "120;refresher=uac"
    assert again[0].headers.get("min-se") == "120"


def test_a_refresh_refused_otherwise_is_tried_again_half_way_to_the_expiry() -> None:
    call, pbx = _answered_uac(500)
    run_until(call, pbx, 56.0)
    assert [t for t, _ in pbx.refreshes] == [45.0, 52.5]  # expiry guard at 60: half way from 45 is 52.5
    assert call.phase is Phase.CONFIRMED


def test_no_session_expires_in_the_2xx_means_no_session_timer() -> None:
    call, invite = new_call()
    call.receive(reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>"), 1.0)
    assert call.session is None
    while (at := call.get_timer()) is not None:
        call.handle_timer(at)
    assert call.phase is Phase.CONFIRMED and CFG.session_expires_s == 1800
