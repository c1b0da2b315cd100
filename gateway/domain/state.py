"""What the store keeps per contact and per campaign: frozen values, replaced, never mutated."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway.domain.abandonment import AbandonWindow
from gateway.domain.answering import AmdSettings, DigitAction, GatherSettings
from gateway.domain.limits import Limits
from gateway.domain.policy import Policy
from gateway.domain.replies import ReplyRules
from gateway.domain.statuses import CampaignStatus, Channel, Profile, Status
from gateway.domain.windows import CallingWindow


class Mode(StrEnum):
    PROGRESSIVE = "progressive"
    PREDICTIVE = "predictive"
    PREVIEW = "preview"


class CallerId(BaseModel):
    """The caller ID a callee sees, as a dial or a campaign asks for it: each field None = not said here.

    A dial's value wins over its campaign's, the campaign's over `sip.from_user` / `sip.from_display`
    (field by field: a dial may name only the number and keep the campaign's display name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    number: str | None = None  # E.164 with +
    name: str | None = None  # the display name
    withheld: bool | None = None  # True: From anonymous (RFC 3323), Privacy: id

    def over(self, base: CallerId | None) -> CallerId:
        """This caller ID with what it leaves unsaid taken from `base`."""
        if base is None:
            return self
        return CallerId(
            number=self.number if self.number is not None else base.number,
            name=self.name if self.name is not None else base.name,
            withheld=self.withheld if self.withheld is not None else base.withheld,
        )

    @property
    def empty(self) -> bool:
        return self.number is None and self.name is None and self.withheld is None


class ContactState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    campaign_id: str
    contact_id: str
    channel: Channel
    status: Status = Status.INITIAL
    sequence: int = 0  # sequence of the last event published for this contact
    attempt: int = 0  # attempts started so far
    policy: Policy = Policy()
    profile: Profile = Profile.MLUVII
    mode: Mode = Mode.PROGRESSIVE
    phone: str | None = None  # E.164, None when invalid
    phone_raw: str = ""
    meta: dict[str, Any] | None = None
    wrapup: bool = False
    bcw_s: float = 0.0
    acw_timeout_s: float = 120.0
    connect_to: str | None = None
    prompt: str | None = None  # a WAV in `sip.prompts_dir`, played on answer; the call ends after it
    caller: CallerId | None = None  # the dial's own caller ID (over the campaign's)
    attempt_caller: CallerId | None = None  # the caller ID the current attempt was placed with (dial over campaign)
    template: dict[str, Any] | None = None
    template_category: str | None = None  # MARKETING, UTILITY, AUTHENTICATION: as the send command says
    in_flight: bool = False  # a call is placed / a message handed to the API
    answered: bool = False  # the current call was answered
    no_retry: bool = False  # admin cancel/finish while in flight: end without retry
    transfer: str | None = None  # the current call's transfer outcome ("ok", "failed: ..."): its hangup's evidence
    # who answered and what they pressed (gateway/domain/answering.py): the rules, then this call's facts
    amd: AmdSettings | None = None
    gather: GatherSettings | None = None
    digit_map: dict[str, DigitAction] | None = None
    amd_result: dict[str, Any] | None = None  # this call's verdict: answered_by, amd_cause, amd_ms
    call_outcome: str | None = None  # machine, message, confirm, opt_out, transfer, retry, no_input
    pressed: str | None = None  # the digits gathered on this call
    # predictive (docs/lawful-calling.md): how long a person may wait for an operator, and what they hear then
    abandon_after_s: float | None = None
    abandon_prompt: str | None = None
    wamid: str | None = None
    retry_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Budget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_talk_minutes: float | None = None
    max_contacts: int | None = None


class CampaignState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    campaign_id: str
    status: CampaignStatus = CampaignStatus.IN_PROGRESS
    reason: str | None = None
    start_at: datetime | None = None
    budget: Budget = Budget()
    max_cps: float | None = None
    max_concurrent: int | None = None
    caller: CallerId | None = None  # the campaign's caller ID for its dials (each dial may name its own)
    talk_seconds: float = 0.0
    dialed_contacts: int = 0  # contacts that got a first dial/send (max_contacts budget)
    paused_by_gateway: bool = False
    replies: ReplyRules | None = None  # what a customer's reply means (SPEC §5.2 `replied`); None: defaults
    # defaults for its dials (a dial's own object replaces the campaign's), taken when a contact is created
    amd: AmdSettings | None = None
    gather: GatherSettings | None = None
    digit_map: dict[str, DigitAction] | None = None
    # lawful calling (docs/lawful-calling.md)
    window: CallingWindow | None = None  # the callee's local hours its dials keep to
    limits: Limits | None = None  # attempt caps per number, over every campaign
    abandon_after_s: float = 2.0  # predictive: a person waits at most this long for an operator
    abandon_prompt: str | None = None  # what they hear then (a WAV in sip.prompts_dir), before the hang-up
    max_abandon_rate: float | None = 0.03  # the campaign pauses above it (None: never)
    # the sample below which it pauses only once its abandons alone exceed max_abandon_rate of this many
    # live answers (AbandonRate.should_pause): 100, so 1 abandon in the first 2 answers is no pause
    abandon_min_answers: int = 100
    abandon_window: AbandonWindow = AbandonWindow.D30
    abandonment: dict[str, Any] | None = None  # the rolling count (AbandonRate.to_dict())
    operators: int | None = None  # predictive: operators on this campaign, when the backend counts them
    operators_online: tuple[str, ...] = ()  # predictive: operators signalled `available`

    def budget_spent(self) -> bool:
        return talk_budget_spent(self.talk_seconds, self.budget.max_talk_minutes)


def contacts_budget_spent(dialed: int, max_contacts: int | None) -> bool:
    """The campaign's `max_contacts` budget: as many contacts as it allows got a first dial or send."""
    return max_contacts is not None and dialed >= max_contacts


def talk_budget_spent(talk_seconds: float, limit_minutes: float | None) -> bool:
    """The one rule of the talk budget: the campaign's talk time (counted in the store, atomically) reached
    its `max_talk_minutes`."""
    return limit_minutes is not None and talk_seconds >= limit_minutes * 60.0
