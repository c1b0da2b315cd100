"""The call's phase table (sip/call.py): its shape, its one timer mechanism, and that what the network or
the owner can do in any order never reaches a (phase, event) the table has no row for."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip import call as callmod
from sip.call import TABLE, Call, Ended, EndKind, Ev, IllegalTransition, Phase
from sip.message import Request, Response, parse
from tests.unit.test_sip_call import CFG, new_call, reply, sent

_ids = itertools.count()


def test_every_action_named_in_the_table_exists() -> None:
    for (phase, event), (target, actions) in TABLE.items():
        assert isinstance(target, Phase)
        for action in actions:
            assert callable(getattr(Call, f"_{action.value}", None)), (phase, event, action)


def test_every_timer_has_an_event_and_phases() -> None:
    assert set(callmod.TIMER_EVENT) == set(callmod.Timer) == set(callmod.TIMER_PHASES)


def test_an_event_with_no_row_names_the_phase_and_the_event() -> None:
    call, _invite = new_call()
    with pytest.raises(IllegalTransition) as caught:
        call._dispatch(Ev.REFRESH_DUE, callmod.Input(1.0))  # a session refresh before any answer
    assert "'refresh_due'" in str(caught.value) and "'inviting'" in str(caught.value)
    assert caught.value.phase is Phase.INVITING and caught.value.event is Ev.REFRESH_DUE


def test_a_cancel_the_far_end_never_finishes_is_given_up_after_64_t1() -> None:
    """Seen with SIPp's mix scenario: a CANCEL between its 180 and 200 is answered 200 and the INVITE gets
    no final at all. RFC 3261 §9.1: after 64 x T1 the INVITE's transaction is considered cancelled."""
    call, invite = new_call()
    call.receive(reply(invite, 180, "Ringing"), 0.1)
    cancel = sent(call.cancel(0.2))[0]
    assert isinstance(cancel, Request)
    call.receive(reply(cancel, 200, "OK"), 0.3)
    events: list[object] = []
    t = 0.3
    while not call.ended and (at := call.get_timer()) is not None:
        t = at
        events += call.handle_timer(t)
    end = [e for e in events if isinstance(e, Ended)]
    assert len(end) == 1 and end[0].kind is EndKind.UNREACHABLE and "§9.1" in (end[0].reason or "")
    assert abs(t - (0.2 + 64 * CFG.t1)) < 1e-6


def _request(ok: Response, method: str, number: int, body: bytes = b"") -> Request:
    h = ok.headers.without("contact").replace("CSeq", f"{number} {method}")
    return parse(Request(method, "sip:telgate@127.0.0.1:5070", h, body).encode())  # type: ignore[return-value]


STEPS = st.lists(
    st.sampled_from(
        [
            "100",
            "180",
            "183",
            "200",
            "200se_uac",
            "200se_uas",
            "301",
            "302",
            "302loop",
            "401",
            "407",
            "422",
            "486",
            "487",
            "503",
            "bye",
            "notify",
            "reinvite",
            "update",
            "options",
            "info_dtmf",
            "info_bad",
            "message",
            "ack",
            "cancel",
            "hangup",
            "transfer",
            "transport_error",
            "timer",
            "refresh_200",
            "refresh_408",
            "refresh_481",
            "refresh_422",
            "refresh_500",
        ]
    ),
    max_size=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(STEPS)
def test_no_order_of_inputs_reaches_a_missing_row(steps: list[str]) -> None:
    call, invite = new_call(ring_timeout=5.0)
    now = 0.0
    ok: Response | None = None
    for step in steps:
        now += 0.7
        current = call._invite or invite
        if step.isdigit() or step.startswith(("200", "30")):
            code = int(step[:3])
            extra: dict[str, str] = {}
            if code in (200,):
                extra["Contact"] = "<sip:bob@10.0.0.9>"
                if step == "200se_uac":
                    extra["Session_Expires"] = "90;refresher=uac"
                elif step == "200se_uas":
                    extra["Session_Expires"] = "90;refresher=uas"
            elif code in (301, 302):
                extra["Contact"] = f"<{current.uri}>" if step == "302loop" else f"<sip:other{next(_ids)}@10.0.0.7>"
            elif code == 401:
                extra["WWW_Authenticate"] = 'Digest realm="pbx", nonce="n"'
            elif code == 407:
                extra["Proxy_Authenticate"] = 'Digest realm="pbx", nonce="n"'
            elif code == 422:
                extra["Min_SE"] = "120"
            resp = reply(current, code, "x", **extra)
            if code == 200:
                ok = resp
            events = call.receive(resp, now)
        elif step in ("bye", "notify", "reinvite", "update", "options", "message") and ok is not None:
            method = {"reinvite": "INVITE"}.get(step, step.upper())
            events = call.receive(_request(ok, method, 10 + next(_ids)), now)
        elif step in ("info_dtmf", "info_bad") and ok is not None:
            body = b"Signal=5\r\nDuration=160\r\n" if step == "info_dtmf" else b"Signal=x"
            info = _request(ok, "INFO", 10 + next(_ids), body)
            info = Request(info.method, info.uri, info.headers.with_("Content-Type", "application/dtmf-relay"), body)
            events = call.receive(info, now)
        elif step == "ack" and ok is not None:
            events = call.receive(_request(ok, "ACK", 1), now)
        elif step == "cancel":
            events = call.cancel(now)
        elif step == "hangup":
            events = call.hangup(now)
        elif step == "transfer":
            events = call.transfer("sip:queue@pbx", now)
        elif step == "transport_error":
            events = call.transport_error("refused")
        elif step == "timer":
            at = call.get_timer()
            now = max(now, at or now)
            events = call.handle_timer(now)
        elif step.startswith("refresh_"):
            pending = [tx.request for role, tx in call._txs.values() if role is callmod.Role.REFRESH]
            if not pending:
                continue
            events = call.receive(reply(pending[-1], int(step[-3:]), "x", Min_SE="120"), now)
        else:
            continue
        assert len([e for e in events if isinstance(e, Ended)]) <= 1
    ends = 0
    for _ in range(200):  # and the call's timers run out without a missing row either
        at = call.get_timer()
        if at is None:
            break
        now = max(now, at)
        ends += len([e for e in call.handle_timer(now) if isinstance(e, Ended)])
    assert ends <= 1 and (call.get_timer() is None or call.phase is Phase.CONFIRMED)
