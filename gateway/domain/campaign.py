"""Campaign statuses (SPEC §5.3) as a transition table and a pure decide_campaign().

Rules:
- a campaign is created `in_progress` by the first contact command naming it, `draft` by `create`;
- `start` goes to `planned` while `start_at` is in the future, else to `in_progress`;
- the gateway pauses a campaign itself (`auto_pause`, with a reason): PBX down, WhatsApp account
  error, talk budget spent; `resume` is refused with `budget_spent` while the budget is spent;
- `finished` accepts nothing; repeating the current state is accepted and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from .state import CampaignState
from .statuses import CampaignStatus

C = CampaignStatus


class Action(StrEnum):
    CREATE = "create"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    FINISH = "finish"
    AUTO_PAUSE = "auto_pause"
    START_DUE = "start_due"


@dataclass(frozen=True, slots=True)
class StartOrPlan:
    pass


@dataclass(frozen=True, slots=True)
class Same:
    pass


@dataclass(frozen=True, slots=True)
class No:
    code: str


CTarget = CampaignStatus | StartOrPlan | Same | No
A = Action

CAMPAIGN: dict[CampaignStatus, dict[Action, CTarget]] = {
    C.DRAFT: {
        A.START: StartOrPlan(),
        A.FINISH: C.FINISHED,
        A.CREATE: No("campaign_exists"),
        A.PAUSE: No("not_started"),
        A.RESUME: No("not_started"),
        A.AUTO_PAUSE: Same(),
    },
    C.PLANNED: {
        A.START: StartOrPlan(),
        A.START_DUE: C.IN_PROGRESS,
        A.PAUSE: C.PAUSED,
        A.FINISH: C.FINISHED,
        A.CREATE: No("campaign_exists"),
        A.RESUME: StartOrPlan(),
        A.AUTO_PAUSE: Same(),
    },
    C.IN_PROGRESS: {
        A.START: Same(),
        A.RESUME: Same(),
        A.PAUSE: C.PAUSED,
        A.AUTO_PAUSE: C.PAUSED,
        A.FINISH: C.FINISHED,
        A.CREATE: No("campaign_exists"),
        A.START_DUE: Same(),
    },
    C.PAUSED: {
        A.RESUME: C.IN_PROGRESS,
        A.START: C.IN_PROGRESS,
        A.PAUSE: Same(),
        A.AUTO_PAUSE: Same(),
        A.FINISH: C.FINISHED,
        A.CREATE: No("campaign_exists"),
        A.START_DUE: Same(),
    },
    C.FINISHED: {},
}


@dataclass(frozen=True, slots=True)
class CampaignDecision:
    state: CampaignState
    changed: bool  # a status change: publish a CampaignStatusEvent
    previous: CampaignStatus | None = None
    refused: str | None = None


def new_campaign(campaign_id: str, draft: bool, **settings: Any) -> CampaignState:
    return CampaignState(
        campaign_id=campaign_id,
        status=C.DRAFT if draft else C.IN_PROGRESS,
        **{k: v for k, v in settings.items() if v is not None},
    )


def decide_campaign(
    state: CampaignState, action: Action, now: datetime, reason: str | None = None, **settings: Any
) -> CampaignDecision:
    target = CAMPAIGN[state.status].get(action)
    if target is None:
        return CampaignDecision(
            state,
            False,
            refused="campaign_finished" if state.status is C.FINISHED else f"illegal:{state.status}+{action}",
        )
    if isinstance(target, No):
        return CampaignDecision(state, False, refused=target.code)
    updates = {k: v for k, v in settings.items() if v is not None}
    if updates:
        state = state.model_copy(update=updates)
    if isinstance(target, Same):
        return CampaignDecision(state, False)
    if isinstance(target, StartOrPlan):
        target = C.PLANNED if state.start_at is not None and state.start_at > now else C.IN_PROGRESS
    if action in (A.RESUME, A.START) and target is C.IN_PROGRESS and state.budget_spent():
        return CampaignDecision(state, False, refused="budget_spent")
    new = state.model_copy(
        update={
            "status": target,
            "reason": reason if action is A.AUTO_PAUSE else None,
            "paused_by_gateway": action is A.AUTO_PAUSE,
        }
    )
    return CampaignDecision(new, target is not state.status, previous=state.status)
