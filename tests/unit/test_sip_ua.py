"""The user agent (sans-IO): routing by Call-ID, the timer heap, and answering retransmitted requests."""

from __future__ import annotations

import itertools

from sip.call import UacConfig, respond
from sip.message import Headers, Request, Response, parse
from sip.ua import CallUpdate, Datagram, UserAgent

CFG = UacConfig(local_host="127.0.0.1", local_port=5070, pbx="127.0.0.1:5060")
PBX = ("127.0.0.1", 5060)


def _ua() -> UserAgent:
    n = itertools.count()
    return UserAgent(CFG, PBX, lambda: f"t{next(n)}")


def _sent(outputs: list[object]) -> list[Request | Response]:
    return [parse(o.data) for o in outputs if isinstance(o, Datagram)]


def _answer_and_bye(ua: UserAgent, call_id: str, invite: Request) -> tuple[Request, list[object]]:
    ok = respond(invite, 200, "OK", to_tag="far")
    ok = Response(200, "OK", ok.headers.with_("Contact", "<sip:far@127.0.0.1:5060>"))
    ua.receive(ok.encode(), PBX, 1.0)
    h = (
        Headers()
        .with_("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKbye1")
        .with_("From", f"{ok.headers.get('to')}")
        .with_("To", f"{invite.headers.get('from')}")
        .with_("Call-ID", call_id)
        .with_("CSeq", "7 BYE")
        .with_("Max-Forwards", "70")
    )
    bye = Request("BYE", "sip:telgate@127.0.0.1:5070", h)
    return bye, ua.receive(bye.encode(), PBX, 5.0)


def test_a_retransmitted_bye_gets_the_same_200_not_481() -> None:
    ua = _ua()
    call_id, out = ua.place("+420601234567", 30.0, b"", 0.0)
    invite = _sent(out)[0]
    assert isinstance(invite, Request)
    bye, first = _answer_and_bye(ua, call_id, invite)
    assert [o for o in first if isinstance(o, CallUpdate)]  # the call ended
    ua.handle_timer(33.0)  # Timer M of the INVITE: the call is forgotten
    assert call_id not in ua.calls
    again = ua.receive(bye.encode(), PBX, 34.0)  # our 200 was lost; the PBX sends the BYE again
    assert [r.status for r in _sent(again)] == [200]  # type: ignore[union-attr]
    assert not [o for o in again if isinstance(o, CallUpdate)]  # and nothing is decided twice
    assert ua.stats["request_retransmission"] == 1
    later = ua.receive(bye.encode(), PBX, 5.0 + 64 * CFG.t1 + 0.5)  # after Timer J: a stranger's BYE
    assert [r.status for r in _sent(later)] == [481]  # type: ignore[union-attr]


def test_the_timer_heap_wakes_only_the_due_calls() -> None:
    ua = _ua()
    ids = [ua.place(f"+42060123456{i}", 10.0 + i, b"", 0.0)[0] for i in range(5)]
    assert ua.get_timer() == 0.5  # Timer A of every INVITE
    for call_id in ids:
        invite = ua.calls[call_id]._invite
        assert invite is not None
        ua.receive(respond(invite, 180, "Ringing", to_tag="x").encode(), PBX, 0.1)
    assert ua.get_timer() == 10.0  # Timer A stopped by the 180s; the first ring timeout is next
    out = ua.handle_timer(10.0)
    cancels = [m for m in _sent(out) if isinstance(m, Request) and m.method == "CANCEL"]
    assert len(cancels) == 1 and ua.get_timer() == 10.5  # the CANCEL's Timer E, then the next ring timeout


def test_dialogs_counts_what_the_ua_holds_until_each_call_ends() -> None:
    """The one count of calls that the metrics, the dispatcher and the drain read (issue 10)."""
    ua = _ua()
    placed = [ua.place(f"+42060123456{i}", 30.0, b"", 0.0) for i in range(3)]
    assert (ua.dialogs(), ua.dialogs("ringing"), ua.dialogs("answered")) == (3, 3, 0)
    (first_id, first_out), (_, second_out) = placed[0], placed[1]
    first = _sent(first_out)[0]
    assert isinstance(first, Request)
    _answer_and_bye(ua, first_id, first)  # answered, then the callee hangs up
    assert (ua.dialogs(), ua.dialogs("answered")) == (2, 0)
    assert first_id in ua.calls  # the ended call lingers for its timers, but is no dialog any more
    second = _sent(second_out)[0]
    assert isinstance(second, Request)
    ua.receive(respond(second, 200, "OK", to_tag="far2").encode(), PBX, 2.0)
    assert (ua.dialogs(), ua.dialogs("ringing"), ua.dialogs("answered")) == (2, 1, 1)
    ua.receive(respond(second, 200, "OK", to_tag="far2").encode(), PBX, 2.1)  # a retransmitted 2xx
    assert (ua.dialogs("ringing"), ua.dialogs("answered")) == (1, 1)
    third_id = placed[2][0]
    third = ua.calls[third_id]._invite
    assert third is not None
    ua.receive(respond(third, 486, "Busy Here", to_tag="far3").encode(), PBX, 3.0)
    assert (ua.dialogs(), ua.dialogs("ringing"), ua.dialogs("answered")) == (1, 0, 1)
    ua.handle_timer(100.0)
    assert ua.dialogs() == 1  # timers end transactions, not the answered dialog


def test_each_call_keeps_to_the_pbx_it_was_placed_with() -> None:
    from sip.ua import Datagram, PingAnswered

    ua = _ua()
    other = ("127.0.0.2", 5080)
    call_id, out = ua.place("+420601234567", 30.0, b"", 0.0, pbx=("127.0.0.2:5080", other))
    invite = _sent(out)[0]
    assert isinstance(invite, Request) and invite.uri == "sip:420601234567@127.0.0.2:5080"
    assert [o.addr for o in out if isinstance(o, Datagram)] == [other]
    ok = respond(invite, 200, "OK", to_tag="b").encode()
    answered = ua.receive(ok, other, 0.5)
    assert [o.addr for o in answered if isinstance(o, Datagram)] == [other]  # the ACK
    bye = ua.hangup(call_id, 1.0)
    assert [o.addr for o in bye if isinstance(o, Datagram)] == [other]  # and the BYE
    _, first = ua.place("+420601234568", 30.0, b"", 0.0)
    assert [o.addr for o in first if isinstance(o, Datagram)] == [PBX]  # the default PBX otherwise
    ping = ua.ping(2.0, ("127.0.0.2:5080", other))
    options = [o for o in ping if isinstance(o, Datagram)]
    assert [o.addr for o in options] == [other] and b"OPTIONS sip:127.0.0.2:5080 SIP/2.0" in options[0].data
    request = parse(options[0].data)
    assert isinstance(request, Request)
    pong = ua.receive(respond(request, 200, "OK", to_tag="p").encode(), other, 2.1)
    assert [o.pbx for o in pong if isinstance(o, PingAnswered)] == [other]
