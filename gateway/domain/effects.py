"""Effects: what a decision asks the shells to do after the state and its events are committed.

Store effects (queue, timers, wamid map) are applied inside the same transaction as the state;
channel effects (dial, cancel, send; on an answered call: play the prompt, transfer, hang up) are carried
out after the commit, by the channel that holds the contact's call (`ChannelPort.submit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gateway.domain.answering import AmdSettings, GatherSettings


class TimerKind(StrEnum):
    BCW = "bcw"
    ACW = "acw"
    AMBIGUOUS = "ambiguous"
    CAMPAIGN_START = "campaign_start"
    ABANDON = "abandon"  # predictive: no operator for the person who answered within `abandon_after_s`


@dataclass(frozen=True, slots=True)
class Enqueue:
    """The contact waits for a dial/send slot from `ready_at`; priority 0 goes first."""

    ready_at: datetime
    priority: int


@dataclass(frozen=True, slots=True)
class Dequeue:
    pass


@dataclass(frozen=True, slots=True)
class StartTimer:
    kind: TimerKind
    due_at: datetime


@dataclass(frozen=True, slots=True)
class CancelTimers:
    pass


@dataclass(frozen=True, slots=True)
class Dial:
    attempt: int


@dataclass(frozen=True, slots=True)
class CancelCall:
    pass


@dataclass(frozen=True, slots=True)
class PlayPrompt:
    """Play the prompt `name` (a WAV in `sip.prompts_dir`) into the answered call; the channel signals
    PROMPT_DONE when it ended (played, or could not be played) — or, `then_hang_up`, hangs up after it
    (the call's contact has already reached its final status: an abandoned call's message)."""

    name: str
    then_hang_up: bool = False


@dataclass(frozen=True, slots=True)
class Transfer:
    """Blind-transfer the answered call to `target` (REFER, RFC 3515); the channel signals TRANSFER_DONE
    with its outcome (the NOTIFY's final, or a refusal)."""

    target: str


@dataclass(frozen=True, slots=True)
class HangUp:
    """End the answered call from our side (BYE); its end comes back as `hangup`."""


@dataclass(frozen=True, slots=True)
class ListenAmd:
    """Run answering-machine detection on the answered call's audio with `settings`; the channel signals
    AMD with the verdict and, when `until_end` (the campaign leaves a message), MACHINE_END when a
    machine's greeting ended."""

    settings: AmdSettings
    until_end: bool


@dataclass(frozen=True, slots=True)
class Gather:
    """Collect digits on the answered call (RFC 4733, SIP INFO, in-band) with `settings`; the channel
    signals DIGITS when the gather ended."""

    settings: GatherSettings


@dataclass(frozen=True, slots=True)
class BlacklistNumber:
    """The contact's number goes on the blacklist, in the decision's own transaction (an opt-out)."""

    phone: str


@dataclass(frozen=True, slots=True)
class NoteNumber:
    """A fact about the contact's number for the caps over every campaign (docs/lawful-calling.md), in the
    decision's transaction: `attempt` (a call placed), `refusal`, `opt_out`, `abandon`."""

    kind: str


@dataclass(frozen=True, slots=True)
class CountLiveAnswer:
    """A person answered a predictive call and its fate is known: reached an operator, or `abandoned`.
    The campaign's abandonment rate counts it (a campaign decision, gateway/domain/campaign.py)."""

    abandoned: bool


@dataclass(frozen=True, slots=True)
class Send:
    attempt: int


@dataclass(frozen=True, slots=True)
class MapWamid:
    wamid: str


@dataclass(frozen=True, slots=True)
class AddTalkTime:
    seconds: float


@dataclass(frozen=True, slots=True)
class PauseCampaign:
    reason: str


@dataclass(frozen=True, slots=True)
class CountDialed:
    """The contact got its first dial/send (campaign `max_contacts` budget)."""


Effect = (
    Enqueue
    | Dequeue
    | StartTimer
    | CancelTimers
    | Dial
    | CancelCall
    | PlayPrompt
    | Transfer
    | HangUp
    | ListenAmd
    | Gather
    | BlacklistNumber
    | NoteNumber
    | CountLiveAnswer
    | Send
    | MapWamid
    | AddTalkTime
    | PauseCampaign
    | CountDialed
)
STORE_EFFECTS = (
    Enqueue,
    Dequeue,
    StartTimer,
    CancelTimers,
    MapWamid,
    AddTalkTime,
    CountDialed,
    BlacklistNumber,
    NoteNumber,
)
