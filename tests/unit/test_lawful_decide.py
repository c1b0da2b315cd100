"""Lawful calling decided by the voice table (issue 25, docs/lawful-calling.md): a due dial outside the
callee's window or over the number's caps waits as `retry_scheduled` with no INVITE; a person left
waiting for an operator is `abandoned`, counted, and the campaign pauses above its rate. Fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.domain import effects as fx
from gateway.domain.campaign import abandon_rate, live_answer, operator_presence
from gateway.domain.decide import decide
from gateway.domain.effects import TimerKind
from gateway.domain.limits import Limits, NumberHistory
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CampaignState, ContactState, Mode
from gateway.domain.statuses import CampaignStatus, Channel, Status
from gateway.domain.windows import CallingWindow

S = Status
K = Kind
NY = "+12125550123"  # America/New_York
US = CallingWindow(preset="us_tcpa")


def contact(phone: str = NY, mode: Mode = Mode.PROGRESSIVE, **kw: Any) -> ContactState:
    state = ContactState(campaign_id="c", contact_id="k", channel=Channel.VOICE, mode=mode, **kw)
    return decide(state, Signal(K.CREATE, phone=phone), datetime(2026, 1, 1, tzinfo=UTC)).state


def test_outside_the_window_waits_with_retry_at_and_no_invite() -> None:
    night = datetime(2026, 12, 7, 3, 30, tzinfo=UTC)  # 22:30 in New York
    d = decide(contact(), Signal(K.DIAL_DUE, window=US), night)
    (event,) = d.events
    assert event.status is S.RETRY_SCHEDULED and event.evidence["kind"] == "outside_window"
    assert event.retry_at == datetime(2026, 12, 7, 13, 0, tzinfo=UTC)  # 08:00 EST
    assert event.attempt == 0 and d.state.attempt == 0
    assert not any(isinstance(e, fx.Dial | fx.NoteNumber | fx.CountDialed) for e in d.effects)
    assert fx.Enqueue(event.retry_at, 0) in d.effects
    # when it opens, the same contact is dialled
    opened = decide(d.state, Signal(K.DIAL_DUE, window=US), event.retry_at)
    assert [e.status for e in opened.events] == [S.CALLING] and fx.Dial(1) in opened.effects
    assert fx.NoteNumber("attempt") in opened.effects


def test_over_the_numbers_cap_waits_until_the_oldest_attempt_falls_out() -> None:
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    tries = tuple(now - timedelta(days=d) for d in (1, 5, 9, 29))
    d = decide(contact(), Signal(K.DIAL_DUE, limits=Limits(preset="fr_2023"), history=NumberHistory(tries)), now)
    (event,) = d.events
    assert event.status is S.RETRY_SCHEDULED and event.evidence["kind"] == "max_attempts"
    assert event.retry_at == tries[-1] + timedelta(days=30)
    assert not any(isinstance(e, fx.Dial) for e in d.effects)


def test_seventy_two_hours_after_an_abandoned_call_nothing_is_dialled() -> None:
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    history = NumberHistory(last_abandon=now - timedelta(hours=71))
    d = decide(contact(), Signal(K.DIAL_DUE, limits=Limits(), history=history), now)
    assert d.events[0].evidence["kind"] == "after_abandon"
    assert d.events[0].retry_at == now + timedelta(hours=1)


def test_a_refusal_is_noted_for_the_caps_but_busy_is_not() -> None:
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    calling = decide(contact(), Signal(K.DIAL_DUE), now).state
    declined = decide(calling, Signal(K.REJECTED, {"sip_code": 603}, attempt=1), now)
    busy = decide(calling, Signal(K.REJECTED, {"sip_code": 486}, attempt=1), now)
    assert fx.NoteNumber("refusal") in declined.effects
    assert fx.NoteNumber("refusal") not in busy.effects


def predictive_waiting(**kw: Any) -> tuple[ContactState, datetime]:
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    state = contact(mode=Mode.PREDICTIVE, abandon_after_s=2.0, **kw)
    state = decide(state, Signal(K.DIAL_DUE), now).state
    answered = decide(state, Signal(K.ANSWERED, attempt=1), now)
    assert answered.state.status is S.AWAITING_OPERATOR
    # the message must have started within 2 s: the timer fires ABANDON_MARGIN_S (0.2 s) before
    assert fx.StartTimer(TimerKind.ABANDON, now + timedelta(seconds=1.8)) in answered.effects
    return answered.state, now


def test_no_operator_within_two_seconds_is_abandoned_with_the_message_then_bye() -> None:
    state, now = predictive_waiting(abandon_prompt="sorry.wav")
    d = decide(state, Signal(K.ABANDON_ELAPSED), now + timedelta(seconds=2))
    assert [e.status for e in d.events] == [S.ABANDONED] and d.events[0].final
    assert fx.PlayPrompt("sorry.wav", then_hang_up=True) in d.effects
    assert fx.CountLiveAnswer(abandoned=True) in d.effects and fx.NoteNumber("abandon") in d.effects


def test_an_operator_in_time_counts_a_live_answer_and_the_timer_is_stale() -> None:
    state, now = predictive_waiting()
    connected = decide(state, Signal(K.CONNECTED), now + timedelta(seconds=1))
    assert connected.state.status is S.CALL_IN_PROGRESS
    assert fx.CountLiveAnswer(abandoned=False) in connected.effects and fx.CancelTimers() in connected.effects
    late = decide(connected.state, Signal(K.ABANDON_ELAPSED), now + timedelta(seconds=2))
    assert late.absorbed == "stale" and not late.events


def test_the_campaign_pauses_above_its_abandonment_rate() -> None:
    now = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
    camp = CampaignState(campaign_id="c", max_abandon_rate=0.03)
    for _ in range(100):
        camp = live_answer(camp, False, now).state
    paused = None
    for i in range(5):
        d = live_answer(camp, True, now + timedelta(minutes=i))
        camp = d.state
        if d.changed:
            paused = i
            break
    assert paused == 3 and camp.status is CampaignStatus.PAUSED  # the 4th abandon of 104: over 3 %
    assert camp.reason is not None and camp.reason.startswith("abandon_rate")
    assert abandon_rate(camp).counts(now + timedelta(minutes=5)) == (104, 4)


def test_operators_come_and_go() -> None:
    camp = CampaignState(campaign_id="c")
    camp = operator_presence(camp, "op1", True).state
    camp = operator_presence(camp, "op2", True).state
    assert operator_presence(camp, "op1", True).wrote is False
    camp = operator_presence(camp, "op1", False).state
    assert camp.operators_online == ("op2",)
