"""Campaign statuses (SPEC §5.3) as a transition table and a pure decide_campaign().

Rules:
- a campaign is created `in_progress` by the first contact command naming it (`implicit`), `draft` by
  `create` (refused `campaign_exists` when it exists); a creation publishes an event with no previous
  status;
- `start` goes to `planned` while `start_at` is in the future, else to `in_progress`; entering `planned`
  sets the persisted `campaign_start` timer (`StartTimer`), whose firing is `start_due`;
- the gateway pauses a campaign itself (`auto_pause`, with a reason): PBX down, WhatsApp account
  error, talk budget spent (`state.talk_budget_spent`: the campaign's talk time reached `max_talk_minutes`);
  `resume` is refused with `budget_spent` while the budget is spent;
- predictive campaigns count every live answer's fate (`live_answer`): the abandonment rate over the
  campaign's rolling `abandon_window` (gateway/domain/abandonment.py); above `max_abandon_rate` the
  campaign pauses itself with reason `abandon_rate` (an operator resumes it: the window still holds the
  abandons, so it pauses again on the next abandon until the rate falls back under the limit);
- operators say they are `available`/`unavailable` per campaign (`operator_presence`): the set of those
  online is the pacer's input (docs/lawful-calling.md);
- entering `finished` finishes every contact of the campaign that is not final (`FinishContacts`);
  `finished` accepts nothing; repeating the current state is accepted and changes nothing.

decide_campaign() returns the whole decision — the new state, whether it is published, and its effects;
the engine commits it (gateway/engine/commit.py) and carries the effects out in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from gateway.domain.abandonment import AbandonRate
from gateway.domain.effects import StartTimer, TimerKind
from gateway.domain.state import CampaignState
from gateway.domain.statuses import CampaignStatus

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
class FinishContacts:
    """Every contact of the campaign that is not final gets the `finish` signal, in this transaction."""


CampaignEffect = StartTimer | FinishContacts


@dataclass(frozen=True, slots=True)
class CampaignDecision:
    state: CampaignState
    changed: bool  # a status change (or a creation): publish a CampaignStatusEvent
    previous: CampaignStatus | None = None
    refused: str | None = None
    effects: tuple[CampaignEffect, ...] = ()
    created: bool = False  # a new campaign: written whole, its event has no previous status
    wrote: bool = False  # its settings or status are written (an accepted action; not a refusal)


def new_campaign(campaign_id: str, draft: bool, **settings: Any) -> CampaignState:
    return CampaignState(
        campaign_id=campaign_id,
        status=C.DRAFT if draft else C.IN_PROGRESS,
        **{k: v for k, v in settings.items() if v is not None},
    )


def implicit(campaign_id: str) -> CampaignDecision:
    """The campaign a contact command names and nobody created: `in_progress` from its first contact."""
    return CampaignDecision(new_campaign(campaign_id, draft=False), True, created=True, wrote=True)


def create(existing: CampaignState | None, campaign_id: str, **settings: Any) -> CampaignDecision:
    """The `create` command: a `draft` with its settings, refused when the campaign exists."""
    if existing is not None:
        return CampaignDecision(existing, False, refused="campaign_exists")
    return CampaignDecision(new_campaign(campaign_id, draft=True, **settings), True, created=True, wrote=True)


def decide_campaign(
    state: CampaignState, action: Action, now: datetime, reason: str | None = None, **settings: Any
) -> CampaignDecision:
    decision = _decide(state, action, now, reason, **settings)
    if not decision.changed:
        return decision
    new = decision.state
    effects: list[CampaignEffect] = []
    if new.status is C.PLANNED and new.start_at is not None:
        effects.append(StartTimer(TimerKind.CAMPAIGN_START, new.start_at))
    if new.status is C.FINISHED:
        effects.append(FinishContacts())
    return CampaignDecision(new, True, previous=decision.previous, effects=tuple(effects), wrote=True)


def _decide(
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
        return CampaignDecision(state, False, wrote=True)
    if isinstance(target, StartOrPlan):
        target = C.PLANNED if state.start_at is not None and state.start_at > now else C.IN_PROGRESS
    if action in (A.RESUME, A.START) and target is C.IN_PROGRESS and state.budget_spent():
        return CampaignDecision(state, False, refused="budget_spent")
    if target is state.status:
        return CampaignDecision(state, False, wrote=True)
    new = state.model_copy(
        update={
            "status": target,
            "reason": reason if action is A.AUTO_PAUSE else None,
            "paused_by_gateway": action is A.AUTO_PAUSE,
        }
    )
    return CampaignDecision(new, target is not state.status, previous=state.status)


# Meta's notices that stop a campaign's sends (issue 22): a template that can no longer be sent, an
# account that may no longer send. The campaign pauses with the reason; an operator resumes it.
TEMPLATE_BLOCKED = frozenset({"PAUSED", "DISABLED", "REJECTED", "PENDING_DELETION", "DELETED", "LIMIT_EXCEEDED"})
ACCOUNT_BLOCKED = frozenset({"ACCOUNT_RESTRICTION", "ACCOUNT_VIOLATION", "DISABLED_UPDATE", "ACCOUNT_DELETED"})


def template_pause_reason(name: str, status: str | None) -> str | None:
    """The reason a campaign that sends template `name` pauses for, or None when it may be sent."""
    return (
        None
        if status is None or status.upper() not in TEMPLATE_BLOCKED
        else f"whatsapp_template_{status.lower()}:{name}"
    )


def account_pause_reason(event: str | None) -> str | None:
    """The reason every WhatsApp campaign pauses for on an `account_update`, or None."""
    return None if event is None or event.upper() not in ACCOUNT_BLOCKED else f"whatsapp_account_update:{event.upper()}"


def abandon_rate(state: CampaignState) -> AbandonRate:
    """The campaign's rolling abandonment count (empty until its first live answer)."""
    if state.abandonment:
        return AbandonRate.from_dict(state.abandonment)
    return AbandonRate(window=state.abandon_window)


def live_answer(state: CampaignState, abandoned: bool, now: datetime) -> CampaignDecision:
    """A person answered a predictive call and reached an operator, or was `abandoned`: counted; the
    campaign pauses itself when its abandonment rate is over `max_abandon_rate`."""
    rate = abandon_rate(state)
    rate = rate.record_abandon(now) if abandoned else rate.record_answer(now)
    new = state.model_copy(update={"abandonment": rate.to_dict()})
    limit = state.max_abandon_rate
    if (
        abandoned
        and limit is not None
        and state.status is C.IN_PROGRESS
        and rate.should_pause(now, limit, state.abandon_min_answers)
    ):
        answered, lost = rate.counts(now)
        reason = f"abandon_rate: {lost} of {answered} live answers abandoned over {state.abandon_window}"
        return decide_campaign(new, Action.AUTO_PAUSE, now, reason=reason)
    return CampaignDecision(new, False, wrote=True)


def operator_presence(state: CampaignState, operator_id: str, available: bool) -> CampaignDecision:
    """An operator `available` for the campaign's calls, or no longer."""
    if (operator_id in state.operators_online) == available:
        return CampaignDecision(state, False)
    online = [o for o in state.operators_online if o != operator_id]
    if available:
        online.append(operator_id)
    if tuple(online) == state.operators_online:
        return CampaignDecision(state, False)
    return CampaignDecision(state.model_copy(update={"operators_online": tuple(online)}), False, wrote=True)
