"""Transition tables: the only place a contact's next status is written down.

Rules:
- `TABLE[channel][status][trigger]` gives the target; a (status, trigger) pair that is not listed is
  illegal: decide() counts it, logs it naming both, and publishes nothing;
- a target is a `Status` (move there) or one of the rules below, which decide() resolves with the
  contact's policy and mode — no other place decides a status;
- the outside is reached only by an `Attempt` target (entering `calling` / `in_progress` with a new
  attempt: an INVITE, a Cloud API send) and a call is CANCELled only by an `Abort` target: effects that
  leave the process follow the target the table chose, never the signal that asked (SPEC §9);
- an answered call does what the contact asked only by the targets of its call rows, which the channel
  carries out after the commit and reports back: `Answer` (entering `call_in_progress`, or a predictive
  `awaiting_operator`) plays the contact's prompt, else transfers to its `connect_to`; `AfterPrompt`
  (`prompt_done`) transfers to `connect_to`, else hangs up; `AfterTransfer` (`transfer_done`) keeps the
  outcome for the hangup's evidence and hangs up — the transferor leaves either way (RFC 5589 §6).
  `AfterPrompt` and `AfterTransfer` change no status and publish nothing; every row of a call that is up
  lists both. Either for a call that is no longer up (it ended, or is not this attempt's) is a stale
  call outcome, which every voice status absorbs (decide() names it `stale_outcome`);
- finals list nothing except the triggers that are expected after them (stale call outcomes,
  duplicate or late webhooks), which are absorbed without an event;
- who answered (docs/voice.md §6.3, gateway/domain/answering.py): with AMD on, an answer the contact must
  wait on (`answered_listen`) is `Listen` — the call is up, the status stays `calling`, no event — and
  the verdict decides: a person is the `Answer`; a machine to hang up on is `MachineHangUp` (the call's
  end then retries it like `unreachable`); a machine that gets a message waits for its greeting's end
  (`Note`) and then `LeaveMessage` (→ `call_in_progress`, the message prompt). A verdict on a call that
  already moved on (no wait) is a `Note` or a `MachineHangUp`; the next event carries it;
- what they pressed: `prompt_done` with a `gather` asks for digits (`AfterPrompt`); `digits` is `Pressed`,
  which the contact's `digits` map resolves (confirm, opt_out, transfer, retry, no input); no status
  change until the call ends (`AfterCall` reads the outcome: `retry` and a machine are retried, the rest
  succeed);
- lawful calling (docs/lawful-calling.md): a due dial outside the callee's calling window, or held back
  by the number's caps, is `Wait` — `retry_scheduled` with `retry_at` when it may be dialled (the attempt
  count unchanged), queued for then; a person who waited `abandon_after_s` for an operator (predictive)
  is `Abandon` — the final `abandoned`, the campaign's message played before the hang-up;
- `awaiting_operator` means two things in SPEC §5.1: waiting before the dial (no call), and a
  predictive call answered and waiting for an operator; the second has its own row, `ON_CALL_AWAITING`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.signals import Kind, Trigger
from gateway.domain.statuses import WA_RANK, Channel, Status

S = Status
K = Kind
T = Trigger


@dataclass(frozen=True, slots=True)
class Retry:
    """retry_scheduled when the signal may be retried and attempts remain, else `final`."""

    final: Status
    always: bool = False  # WhatsApp: retried regardless of `retry_on`
    at_least_s: float = 0.0  # 131049: no sooner than 24 h


@dataclass(frozen=True, slots=True)
class Attempt:
    """A new attempt starts: the contact enters `status` with attempt + 1 and the channel contacts the
    number (an INVITE, a Cloud API send). The only target whose decision reaches the outside (SPEC §9:
    the wire follows the transition); `status` is always one of `CONTACTING`."""

    status: Status


@dataclass(frozen=True, slots=True)
class Abort:
    """The attempt in flight is abandoned: the contact moves to `status` and a call still ringing is
    CANCELled (a message already handed to Meta cannot be recalled: no effect for WhatsApp)."""

    status: Status


@dataclass(frozen=True, slots=True)
class Answer:
    """Answered: predictive calls wait for an operator, the others are connected. The call then does what
    the contact asked on answer: its `prompt` is played (PlayPrompt), else it is transferred to its
    `connect_to` (Transfer; the channel's `sip.connect_to` when the contact names none), else nothing."""

    predictive: Status
    other: Status


@dataclass(frozen=True, slots=True)
class AfterPrompt:
    """The prompt ended: the call is transferred to its `connect_to` (Transfer), else hung up (HangUp).
    No status change, no event."""


@dataclass(frozen=True, slots=True)
class AfterTransfer:
    """The transfer's outcome (`ok`, or `failed: <code> <reason>`) is kept on the contact for its hangup's
    evidence, and the call is hung up (HangUp) either way (RFC 5589 §6). No status change, no event."""


@dataclass(frozen=True, slots=True)
class AfterCall:
    """The call ended after it was answered: a machine hung up on, or a `retry` pressed, is retried
    (`Retry(completed_without_answer)`, a machine as `unreachable`); a call still held in `calling` for the
    verdict that the callee hung up is `canceled_by_client`; else ACW when the contact asked for wrap-up,
    else success."""


@dataclass(frozen=True, slots=True)
class Listen:
    """Answered, held silent while AMD listens (ListenAmd): the call is up, no status change, no event."""


@dataclass(frozen=True, slots=True)
class Note:
    """A verdict kept on the contact for the call's next event; no status change, no event."""


@dataclass(frozen=True, slots=True)
class MachineHangUp:
    """A machine (or a fax) to hang up on: the verdict is kept, the call hung up (HangUp); its end decides."""


@dataclass(frozen=True, slots=True)
class LeaveMessage:
    """A machine's greeting ended: → `call_in_progress`, its message prompt plays (PlayPrompt)."""


@dataclass(frozen=True, slots=True)
class Pressed:
    """A gather ended: the `digits` map says what it means; the call's end carries it (no event now)."""


@dataclass(frozen=True, slots=True)
class Wait:
    """The dial may not be placed now (window, caps): `retry_scheduled` until it may, no attempt spent."""


@dataclass(frozen=True, slots=True)
class Abandon:
    """No operator within `abandon_after_s`: `abandoned`, the abandon prompt then BYE, counted."""


@dataclass(frozen=True, slots=True)
class Stay:
    """No status change, no event; the decision may still carry effects (enqueue, timers, wamid)."""


@dataclass(frozen=True, slots=True)
class Absorb:
    """An expected repeat or late signal: counted as `why`, acknowledged, nothing published."""

    why: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """A command that is not allowed now: rejected with `code`, nothing changes."""

    code: str


Target = (
    Status
    | Attempt
    | Abort
    | Retry
    | Answer
    | AfterPrompt
    | AfterTransfer
    | AfterCall
    | Listen
    | Note
    | MachineHangUp
    | LeaveMessage
    | Pressed
    | Wait
    | Abandon
    | Stay
    | Absorb
    | Refuse
)
Row = dict[str, Target]

STALE = Absorb("stale")
DUP = Absorb("duplicate")
RECORD = Absorb("recorded")
IN_FLIGHT = Refuse("contact_in_flight")

_ADMIN: Row = {K.CANCEL: S.CANCELED_BY_ADMIN, K.FINISH: S.CANCELED_BY_ADMIN, K.REMOVE: S.REMOVED}
_PRE_DIAL: Row = {
    K.DIAL_DUE: Attempt(S.CALLING),
    T.BLACKLIST_HIT: S.BLACKLISTED,
    T.PLAN_LIMIT: S.PLAN_LIMIT_EXCEEDED,
    T.OUTSIDE_WINDOW: Wait(),
    T.NUMBER_CAPPED: Wait(),
    **_ADMIN,
}
# a call outcome of an attempt that is no longer in flight (decide() names it T.STALE), in any voice status
_STALE: Row = {T.STALE: STALE}
# what an answered call reports back after its effects (a call that is up: ON_CALL_AWAITING, call_in_progress)
_CALL_UP: Row = {
    K.PROMPT_DONE: AfterPrompt(),
    K.TRANSFER_DONE: AfterTransfer(),
    K.DIGITS: Pressed(),
    # a verdict that arrives after the call moved on (AMD without wait): kept for the next event
    T.AMD_HUMAN: Note(),
    T.AMD_MACHINE: MachineHangUp(),
    K.MACHINE_END: Absorb("after_verdict"),
}
# operator signals and timers of a call that already ended
_CALL_SIGNALS_STALE: Row = {
    k: STALE for k in (K.CONNECTED, K.WRAPUP_DONE, K.ACW_ELAPSED, K.BCW_ELAPSED, K.ABANDON_ELAPSED)
}

VOICE: dict[Status, Row] = {
    S.INITIAL: {**_PRE_DIAL, K.ASSIGNED: S.OPERATOR_ASSIGNED, K.NO_OPERATOR: S.AWAITING_OPERATOR},
    S.OPERATOR_ASSIGNED: {
        **_PRE_DIAL,
        K.ACCEPTED: S.BCW,
        K.CALL_NOW: Stay(),
        K.OPERATOR_REJECTED: S.REJECTED_BY_OPERATOR,
        K.NO_OPERATOR: S.AWAITING_OPERATOR,
    },
    S.BCW: {
        **_PRE_DIAL,
        K.BCW_ELAPSED: Stay(),
        K.CALL_NOW: Stay(),
        K.OPERATOR_REJECTED: S.REJECTED_BY_OPERATOR,
    },
    S.AWAITING_OPERATOR: {**_ADMIN, K.ASSIGNED: S.OPERATOR_ASSIGNED, K.NO_OPERATOR: DUP},
    S.CALLING: {
        K.RINGING: Stay(),
        K.ANSWERED: Answer(predictive=S.AWAITING_OPERATOR, other=S.CALL_IN_PROGRESS),
        # answered and held while AMD listens: the verdict decides (docs/voice.md §6.3)
        T.ANSWERED_LISTEN: Listen(),
        T.AMD_HUMAN: Answer(predictive=S.AWAITING_OPERATOR, other=S.CALL_IN_PROGRESS),
        T.AMD_MACHINE: MachineHangUp(),
        T.AMD_MACHINE_WAIT: Note(),
        T.AMD_MESSAGE: LeaveMessage(),
        K.MACHINE_END: Absorb("no_message"),
        K.HANGUP: AfterCall(),
        K.CLIENT_HANGUP: AfterCall(),
        K.REJECTED: Retry(S.COMPLETED_WITHOUT_ANSWER),
        K.UNREACHABLE: Retry(S.COMPLETED_WITHOUT_ANSWER),
        K.FAILED: Retry(S.DIAL_FAILED),
        K.INVALID_NUMBER: S.INVALID_RECORD,
        K.GATEWAY_RESTART: Retry(S.DIAL_FAILED),
        K.CANCEL: Abort(S.CANCELED_BY_ADMIN),
        T.SETTLE: Stay(),
        K.REMOVE: IN_FLIGHT,
    },
    S.CALL_IN_PROGRESS: {
        **_CALL_UP,
        K.HANGUP: AfterCall(),
        K.CLIENT_HANGUP: AfterCall(),
        K.CONNECTED: DUP,
        K.RINGING: STALE,
        K.ANSWERED: DUP,
        K.GATEWAY_RESTART: S.SUCCESS,
        T.SETTLE: Stay(),
        K.REMOVE: IN_FLIGHT,
    },
    S.ACW: {
        K.WRAPUP_DONE: S.SUCCESS,
        K.ACW_ELAPSED: S.SUCCESS,
        T.SETTLE: Stay(),
        K.REMOVE: IN_FLIGHT,
    },
    S.RETRY_SCHEDULED: {**_PRE_DIAL, **_CALL_SIGNALS_STALE},
    # finals: only what is expected after them
    **{
        status: {}
        for status in (
            S.SUCCESS,
            S.CANCELED_BY_CLIENT,
            S.ABANDONED,
            S.COMPLETED_WITHOUT_ANSWER,
            S.DIAL_FAILED,
            S.INVALID_RECORD,
            S.BLACKLISTED,
            S.REJECTED_BY_OPERATOR,
            S.CANCELED_BY_ADMIN,
            S.REMOVED,
            S.PLAN_LIMIT_EXCEEDED,
        )
    },
}
for _row in VOICE.values():  # every voice status absorbs a stale call outcome, and an abandon timer that raced
    _row.update(_STALE)
    _row.setdefault(K.ABANDON_ELAPSED, STALE)

# predictive: answered, waiting for a free operator (a call is up)
ON_CALL_AWAITING: Row = {
    **_CALL_UP,
    **_STALE,
    K.CONNECTED: S.CALL_IN_PROGRESS,
    K.ABANDON_ELAPSED: Abandon(),
    K.CLIENT_HANGUP: S.CANCELED_BY_CLIENT,
    K.HANGUP: S.CANCELED_BY_CLIENT,
    K.ANSWERED: DUP,
    K.GATEWAY_RESTART: S.SUCCESS,
    T.SETTLE: Stay(),
    K.REMOVE: IN_FLIGHT,
}

_WA_LATE: Row = {
    k: RECORD
    for k in (
        K.WA_ACCEPTED,
        K.WA_SENT,
        K.WA_DELIVERED,
        K.WA_READ,
        K.WA_DELIVERY_FAILED,
        K.WA_SENDING_FAILED,
        K.WA_RETRYABLE,
        K.WA_PAIR_LIMIT,
        K.WA_INVALID,
        K.WA_ACCOUNT,
        K.WA_AMBIGUOUS,
        K.AMBIGUOUS_ELAPSED,
        K.WA_REJECTED,
        K.WA_REPLY,
    )
}
_WA_HANDED: Row = {  # the message is with Meta: it cannot be recalled
    K.CANCEL: S.CANCELED_BY_ADMIN,
    T.SETTLE: Stay(),
    K.REMOVE: IN_FLIGHT,
    K.WA_ACCEPTED: DUP,
    K.AMBIGUOUS_ELAPSED: STALE,
}
_WA_LADDER: dict[Kind, Status] = {
    K.WA_SENT: S.SENT,
    K.WA_DELIVERED: S.DELIVERED,
    K.WA_READ: S.READ,
    K.WA_REPLY: S.REPLIED,
}
_WA_UP: Row = {k: target for k, target in _WA_LADDER.items()}


def _up_from(status: Status) -> Row:
    """The ladder from `status` (SPEC §5.2: `in_progress < sent < delivered < read < replied`): a webhook
    status above it moves the contact there, one at or below it is a duplicate."""
    here = WA_RANK[status]
    return {k: (target if WA_RANK[target] > here else DUP) for k, target in _WA_LADDER.items()}


# a reply to a message that never reached the customer (sender matching only): it is not this contact's
_WA_NOT_SENT: Row = {K.WA_REPLY: Absorb("not_sent")}
# a send refused by the API, or a `failed` webhook, while the message is not known to be delivered
_WA_FAILURES: Row = {
    K.WA_SENDING_FAILED: S.SENDING_FAILED,
    K.WA_DELIVERY_FAILED: S.DELIVERY_FAILED,
    K.WA_RETRYABLE: Retry(S.ERROR, always=True),
    K.WA_PAIR_LIMIT: Retry(S.DELIVERY_FAILED, always=True, at_least_s=86_400.0),
    K.WA_INVALID: S.INVALID_RECORD,
    K.WA_ACCOUNT: S.ERROR,
    K.WA_REJECTED: S.ERROR,
}
_WA_FAILED_LATE: Row = {k: DUP for k in _WA_FAILURES}  # a failure after delivery or a final status

WHATSAPP: dict[Status, Row] = {
    S.INITIAL: {
        K.DIAL_DUE: Attempt(S.IN_PROGRESS),
        T.BLACKLIST_HIT: S.BLACKLISTED,
        T.PLAN_LIMIT: S.ERROR,
        **_ADMIN,
        **_WA_NOT_SENT,
    },
    S.IN_PROGRESS: {
        **_WA_HANDED,
        **_up_from(S.IN_PROGRESS),
        **_WA_FAILURES,
        K.WA_ACCEPTED: Stay(),
        K.WA_AMBIGUOUS: Stay(),
        K.AMBIGUOUS_ELAPSED: Retry(S.ERROR, always=True),
        K.GATEWAY_RESTART: Stay(),
    },
    S.SENT: {**_WA_HANDED, **_up_from(S.SENT), **_WA_FAILURES},
    S.DELIVERED: {**_WA_HANDED, **_up_from(S.DELIVERED), **_WA_FAILED_LATE},
    S.READ: {K.WA_ACCEPTED: DUP, **_up_from(S.READ), **_WA_FAILED_LATE},
    # the first reply decides; a later one is an inbound message only
    S.REPLIED: {K.WA_ACCEPTED: DUP, **_up_from(S.REPLIED), **_WA_FAILED_LATE},
    S.DELIVERY_FAILED: {
        K.WA_DELIVERED: S.DELIVERED,
        K.WA_READ: S.READ,
        K.WA_REPLY: S.REPLIED,
        K.WA_SENT: DUP,
        **_WA_FAILED_LATE,
    },
    S.SENDING_FAILED: {**_WA_FAILED_LATE, **_WA_NOT_SENT},
    S.ERROR: {**_WA_FAILED_LATE, **_WA_NOT_SENT},
    S.RETRY_SCHEDULED: {
        K.DIAL_DUE: Attempt(S.IN_PROGRESS),
        T.BLACKLIST_HIT: S.BLACKLISTED,
        T.PLAN_LIMIT: S.ERROR,
        **_ADMIN,
        **_WA_UP,  # a late webhook of the previous attempt still wins
        K.AMBIGUOUS_ELAPSED: STALE,
    },
    S.CANCELED_BY_ADMIN: _WA_LATE,
    S.REMOVED: _WA_LATE,
    S.INVALID_RECORD: dict(_WA_NOT_SENT),
    S.BLACKLISTED: dict(_WA_NOT_SENT),
}

TABLES: dict[Channel, dict[Status, Row]] = {Channel.VOICE: VOICE, Channel.WHATSAPP: WHATSAPP}

# the status a channel contacts the number in: entered only by an `Attempt` target
CONTACTING: dict[Channel, Status] = {Channel.VOICE: S.CALLING, Channel.WHATSAPP: S.IN_PROGRESS}


# the rows of a voice call that is up (answered, not ended): each carries out what the answer asked
CALL_UP_ROWS: tuple[Row, ...] = (VOICE[S.CALL_IN_PROGRESS], ON_CALL_AWAITING)
# each call-control target and the triggers it may follow (voice only)
_CALL_CONTROL: dict[type, tuple[str, ...]] = {
    Answer: (K.ANSWERED, T.AMD_HUMAN),
    AfterPrompt: (K.PROMPT_DONE,),
    AfterTransfer: (K.TRANSFER_DONE,),
    Pressed: (K.DIGITS,),
    Listen: (T.ANSWERED_LISTEN,),
    LeaveMessage: (T.AMD_MESSAGE,),
    MachineHangUp: (T.AMD_MACHINE,),
    Abandon: (K.ABANDON_ELAPSED,),
}
# what every call that is up must list: it reports these after carrying out its effects
_CALL_UP_REPORTS: dict[str, type] = {K.PROMPT_DONE: AfterPrompt, K.TRANSFER_DONE: AfterTransfer, K.DIGITS: Pressed}


def _check_tables() -> None:
    """The shape SPEC §9 rests on, checked when the module loads: a row that enters a channel's
    contacting status without starting an attempt (or starts one elsewhere) is a bug in the tables; so
    is a call-control target on another trigger or channel, or a call that is up without each of
    `prompt_done`, `transfer_done` and `digits`."""
    rows = [(ch, r) for ch, table in TABLES.items() for r in table.values()] + [(Channel.VOICE, ON_CALL_AWAITING)]
    for channel, row in rows:
        for trigger, target in row.items():
            if isinstance(target, Attempt) and target.status is not CONTACTING[channel]:
                raise AssertionError(f"{channel} {trigger}: an attempt enters {target.status}")
            if target is CONTACTING[channel]:
                raise AssertionError(f"{channel} {trigger} enters {target} without a new attempt")
            kinds = _CALL_CONTROL.get(type(target))
            if kinds is not None and (channel is not Channel.VOICE or trigger not in kinds):
                raise AssertionError(f"{channel} {trigger}: {type(target).__name__} belongs to voice {kinds}")
    for row in CALL_UP_ROWS:
        for kind, target_type in _CALL_UP_REPORTS.items():
            if not isinstance(row.get(kind), target_type):
                raise AssertionError(f"a call that is up lists {kind} as {target_type.__name__}")


_check_tables()
