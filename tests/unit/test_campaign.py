from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.domain.campaign import (
    Action,
    FinishContacts,
    create,
    decide_campaign,
    implicit,
    new_campaign,
)
from gateway.domain.effects import StartTimer, TimerKind
from gateway.domain.state import Budget, talk_budget_spent
from gateway.domain.statuses import CampaignStatus as C

T0 = datetime(2026, 11, 24, tzinfo=UTC)


def test_create_start_planned_then_due() -> None:
    camp = new_campaign("x", draft=True)
    assert camp.status is C.DRAFT
    d = decide_campaign(camp, Action.START, T0, start_at=T0 + timedelta(hours=1))
    assert d.state.status is C.PLANNED and d.changed
    d = decide_campaign(d.state, Action.START_DUE, T0 + timedelta(hours=1))
    assert d.state.status is C.IN_PROGRESS


def test_auto_pause_has_reason_and_resume_refused_while_budget_spent() -> None:
    camp = new_campaign("x", draft=False, budget=Budget(max_talk_minutes=1))
    d = decide_campaign(camp, Action.AUTO_PAUSE, T0, reason="pbx_down")
    assert d.state.status is C.PAUSED and d.state.reason == "pbx_down" and d.state.paused_by_gateway
    spent = d.state.model_copy(update={"talk_seconds": 61})
    assert decide_campaign(spent, Action.RESUME, T0).refused == "budget_spent"
    assert decide_campaign(d.state, Action.RESUME, T0).state.status is C.IN_PROGRESS


def test_finished_accepts_nothing_and_repeat_is_no_change() -> None:
    camp = new_campaign("x", draft=False)
    assert not decide_campaign(camp, Action.START, T0).changed
    fin = decide_campaign(camp, Action.FINISH, T0).state
    assert decide_campaign(fin, Action.RESUME, T0).refused == "campaign_finished"
    assert decide_campaign(camp, Action.CREATE, T0).refused == "campaign_exists"


def test_the_decision_carries_its_effects_the_start_timer_and_finishing_the_contacts() -> None:
    """decide_campaign() returns the whole decision (issue 12): the engine only writes it."""
    camp = new_campaign("x", draft=True)
    planned = decide_campaign(camp, Action.START, T0, start_at=T0 + timedelta(hours=1))
    assert planned.effects == (StartTimer(TimerKind.CAMPAIGN_START, T0 + timedelta(hours=1)),)
    started = decide_campaign(camp, Action.START, T0, start_at=T0 - timedelta(hours=1))
    assert started.state.status is C.IN_PROGRESS and started.effects == ()
    finished = decide_campaign(started.state, Action.FINISH, T0)
    assert finished.effects == (FinishContacts(),) and finished.wrote
    again = decide_campaign(started.state, Action.START, T0)
    assert not again.changed and again.effects == () and again.wrote, "accepted, nothing to publish"
    assert not decide_campaign(finished.state, Action.RESUME, T0).wrote, "a refusal writes nothing"


def test_create_and_implicit_campaigns_and_the_talk_budget() -> None:
    made = create(None, "x", max_cps=2.0)
    assert made.created and made.changed and made.state.status is C.DRAFT and made.state.max_cps == 2.0
    assert create(made.state, "x").refused == "campaign_exists"
    first = implicit("y")
    assert first.created and first.state.status is C.IN_PROGRESS
    assert talk_budget_spent(60.0, 1.0) and not talk_budget_spent(59.9, 1.0) and not talk_budget_spent(1e9, None)
