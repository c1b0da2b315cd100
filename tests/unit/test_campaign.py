from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.domain.campaign import Action, decide_campaign, new_campaign
from gateway.domain.state import Budget
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
