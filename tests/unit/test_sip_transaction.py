"""Client transactions with a fake clock: every timer, the ACK rules, retransmissions (RFC 3261 §17.1)."""

from __future__ import annotations

from collections.abc import Sequence

from sip.message import Headers, Request, Response, parse
from sip.transaction import (
    InviteClientTransaction,
    NonInviteClientTransaction,
    ResponseReceived,
    State,
    Terminated,
    TimedOut,
    Transmit,
)


def invite() -> Request:
    h = (
        Headers()
        .with_("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport")
        .with_("Max-Forwards", "70")
        .with_("From", "<sip:telgate@10.0.0.1>;tag=f1")
        .with_("To", "<sip:420601234567@pbx>")
        .with_("Call-ID", "call-1")
        .with_("CSeq", "1 INVITE")
        .with_("Route", "<sip:proxy;lr>")
    )
    return Request("INVITE", "sip:420601234567@pbx", h)


def response(status: int, reason: str = "", to_tag: str = "t9", method: str = "INVITE") -> Response:
    h = (
        Headers()
        .with_("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc")
        .with_("From", "<sip:telgate@10.0.0.1>;tag=f1")
        .with_("To", f"<sip:420601234567@pbx>;tag={to_tag}")
        .with_("Call-ID", "call-1")
        .with_("CSeq", f"1 {method}")
    )
    return Response(status, reason, h)


def retransmissions(events: Sequence[object]) -> int:
    return sum(1 for e in events if isinstance(e, Transmit) and e.retransmission)


def test_timer_a_doubles_and_timer_b_times_out_at_64_t1() -> None:
    tx = InviteClientTransaction(invite(), reliable=False, now=0.0)
    assert tx.events() == [Transmit(invite())]
    fired_at = []
    now = 0.0
    while tx.state is not State.TERMINATED:
        now = tx.get_timer() or now
        events = tx.handle_timer(now)
        if retransmissions(events):
            fired_at.append(now)
        if any(isinstance(e, TimedOut) for e in events):
            assert events[-1] == Terminated()
            break
    assert fired_at[:4] == [0.5, 1.5, 3.5, 7.5] and now == 32.0


def test_provisional_stops_retransmission_and_allows_cancel() -> None:
    tx = InviteClientTransaction(invite(), reliable=False, now=0.0)
    tx.events()
    assert not tx.provisional_seen
    events = tx.receive(response(180, "Ringing"), 0.2)
    assert events == [ResponseReceived(response(180, "Ringing"))] and tx.provisional_seen
    assert tx.get_timer() is None  # no retransmission, and Timer B only matters in Calling (§17.1.1.2)


def test_non_2xx_is_acked_inside_the_transaction_and_again_on_retransmission() -> None:
    tx = InviteClientTransaction(invite(), reliable=False, now=0.0)
    tx.events()
    busy = response(486, "Busy Here")
    events = tx.receive(busy, 1.0)
    ack = events[0]
    assert isinstance(ack, Transmit) and ack.message.method == "ACK"
    h = ack.message.headers
    assert h.get("via") == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport"  # same branch
    assert h.get("to") == "<sip:420601234567@pbx>;tag=t9" and h.get("cseq") == "1 ACK"
    assert h.get("route") == "<sip:proxy;lr>" and ack.message.uri == "sip:420601234567@pbx"
    assert parse(ack.message.encode()).headers.get("call-id") == "call-1"
    assert events[1] == ResponseReceived(busy) and tx.state is State.COMPLETED
    again = tx.receive(busy, 2.0)
    assert again == [Transmit(ack.message, retransmission=True)]
    assert tx.get_timer() == 33.0  # Timer D: 32 s over UDP
    assert tx.handle_timer(33.0) == [Terminated()]


def test_2xx_goes_to_accepted_and_retransmissions_reach_the_tu() -> None:
    tx = InviteClientTransaction(invite(), reliable=True, now=0.0)
    tx.events()
    ok = response(200, "OK")
    assert tx.receive(ok, 1.0) == [ResponseReceived(ok)] and tx.state is State.ACCEPTED
    assert tx.receive(ok, 1.5) == [ResponseReceived(ok, retransmission=True)]  # the TU ACKs every 2xx
    assert tx.get_timer() == 33.0  # Timer M
    assert tx.handle_timer(33.0) == [Terminated()]


def test_reliable_transport_has_no_retransmission_and_no_timer_d() -> None:
    tx = InviteClientTransaction(invite(), reliable=True, now=0.0)
    tx.events()
    assert tx.get_timer() == 32.0
    tx.receive(response(480), 1.0)
    assert tx.get_timer() == 1.0 and tx.handle_timer(1.0) == [Terminated()]


def test_non_invite_timers_e_f_k() -> None:
    options = Request("OPTIONS", "sip:pbx", invite().headers.replace("CSeq", "2 OPTIONS"))
    tx = NonInviteClientTransaction(options, reliable=False, now=0.0)
    tx.events()
    times = []
    now = 0.0
    while True:
        now = tx.get_timer() or now
        events = tx.handle_timer(now)
        if retransmissions(events):
            times.append(now)
        if any(isinstance(e, TimedOut) for e in events):
            break
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5] and now == 32.0  # E caps at T2 = 4 s

    tx = NonInviteClientTransaction(options, reliable=False, now=0.0)
    tx.events()
    tx.receive(response(100, method="OPTIONS"), 0.1)
    assert tx.handle_timer(0.5)[0] == Transmit(options, retransmission=True) and tx.get_timer() == 4.5  # T2
    ok = response(200, "OK", method="OPTIONS")
    assert tx.receive(ok, 1.0) == [ResponseReceived(ok)]
    assert tx.receive(ok, 1.1) == []  # retransmitted final absorbed
    assert tx.get_timer() == 6.0 and tx.handle_timer(6.0) == [Terminated()]  # Timer K = T4
