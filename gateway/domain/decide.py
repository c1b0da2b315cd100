"""decide(): the one function that gives a contact its next status (DESIGN.md, "The one idea").

Pure: no I/O, no clock (`now` is an input), no asyncio. The shells build a `Signal`, call decide(),
commit `Decision.state` with `Decision.events` in one transaction, then carry out `Decision.effects`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from gateway.domain import effects as fx
from gateway.domain import limits as caps
from gateway.domain import windows
from gateway.domain.answering import MACHINE_ENDS, DigitAction, MachineAction, digit_action
from gateway.domain.effects import Effect, TimerKind
from gateway.domain.signals import Kind, Signal, Trigger
from gateway.domain.state import ContactState, Mode, contacts_budget_spent
from gateway.domain.statuses import Channel, Status, is_final
from gateway.domain.tables import (
    ON_CALL_AWAITING,
    TABLES,
    Abandon,
    Abort,
    Absorb,
    AfterCall,
    AfterPrompt,
    AfterTransfer,
    Answer,
    Attempt,
    LeaveMessage,
    Listen,
    MachineHangUp,
    Note,
    Pressed,
    Refuse,
    Retry,
    Stay,
    Target,
    Wait,
)

S = Status
K = Kind

VOICE_OUTCOMES = frozenset(
    {K.RINGING, K.ANSWERED, K.REJECTED, K.UNREACHABLE, K.FAILED, K.INVALID_NUMBER, K.CLIENT_HANGUP, K.HANGUP}
)
# what an answered call reports after carrying out its effects: stale unless that call is up
CALL_REPORTS = frozenset({K.PROMPT_DONE, K.TRANSFER_DONE, K.AMD, K.MACHINE_END, K.DIGITS})
AMD_FACTS = ("answered_by", "amd_cause", "amd_ms")
DEFAULT_AMBIGUOUS_TIMEOUT_S = 600.0
PRIORITY_DUE = 0  # due retries, operator-ready previews: before new contacts (SPEC §10)
PRIORITY_NEW = 1
# statuses in which a contact may wait in the dispatch queue / hold a persisted timer: leaving them
# clears the queue entry / the timers (and only leaving them costs a write)
QUEUEABLE = frozenset({S.INITIAL, S.OPERATOR_ASSIGNED, S.BCW, S.RETRY_SCHEDULED})
TIMED = frozenset({S.BCW, S.ACW, S.IN_PROGRESS, S.AWAITING_OPERATOR})
# the abandon timer fires this much before `abandon_after_s`, so that the message has started by then (the
# timer, the commit and the first RTP packet took 1-10 ms in tests/integration/test_lawful_calling.py)
ABANDON_MARGIN_S = 0.2
REFUSAL_SIP = frozenset({603, 607, 608})  # Decline, Unwanted, Rejected: the callee said no (not 486 Busy)
REFUSAL_Q850 = 21  # call rejected
WINDOW_RECHECK = timedelta(days=1)  # a window that opens nowhere within its horizon is looked at again then


@dataclass(frozen=True, slots=True)
class EventDraft:
    """A status change to publish; the shell adds event_id, occurred_at and the envelope."""

    sequence: int
    status: Status
    previous_status: Status | None
    final: bool
    attempt: int
    retry_at: datetime | None
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    state: ContactState
    events: tuple[EventDraft, ...] = ()
    effects: tuple[Effect, ...] = ()
    illegal: str | None = None  # "<status> + <trigger>": counted, logged, never published
    absorbed: str | None = None  # duplicate / stale / recorded: expected, acknowledged, not published
    refused: str | None = None  # a command not allowed now: its rejection code

    @property
    def changed(self) -> bool:
        return bool(self.events) or bool(self.effects)


def decide(state: ContactState, signal: Signal, now: datetime) -> Decision:
    if signal.kind is K.CREATE:
        return _create(state, signal, now)
    if state.sequence == 0:
        return Decision(state, refused="unknown_contact")
    held = _held_back(state, signal, now) if signal.kind is K.DIAL_DUE and state.channel is Channel.VOICE else None
    trigger = _trigger(state, signal, held)
    row = (
        ON_CALL_AWAITING
        if state.status is S.AWAITING_OPERATOR and state.in_flight
        else TABLES[state.channel].get(state.status, {})
    )
    target: Target | None = row.get(trigger)
    if target is None:
        return Decision(state, illegal=f"{state.status} + {trigger}")
    return _apply(state, signal, trigger, target, now, held)


def _trigger(state: ContactState, signal: Signal, held: Held | None) -> str:
    """The table's key for this signal in this state; `held`: why a due dial may not be placed now."""
    k = signal.kind
    if (
        state.channel is Channel.VOICE
        and k in VOICE_OUTCOMES
        and (not state.in_flight or (signal.attempt is not None and signal.attempt != state.attempt))
        and state.status is not S.AWAITING_OPERATOR
    ):
        return Trigger.STALE  # of an attempt no longer in flight: the tables absorb it
    if k in CALL_REPORTS and (
        not (state.in_flight and state.answered) or (signal.attempt is not None and signal.attempt != state.attempt)
    ):
        return Trigger.STALE  # of a call that is no longer up (or not this attempt's)
    if k is K.ANSWERED and state.status is S.CALLING and _amd_waits(state):
        return Trigger.ANSWERED_LISTEN
    if k is K.AMD:
        return _verdict(state, str(signal.evidence.get("answered_by", "unknown")))
    if k is K.MACHINE_END and state.status is S.CALLING and state.call_outcome == "awaiting_greeting_end":
        return Trigger.AMD_MESSAGE
    if k is K.DIAL_DUE:
        if signal.blacklisted:
            return Trigger.BLACKLIST_HIT
        if state.attempt == 0 and contacts_budget_spent(signal.contacts_dialed, signal.max_contacts):
            return Trigger.PLAN_LIMIT
        if held is not None:
            return held.trigger
    if k is K.FINISH and (state.in_flight or state.status in (S.ACW, S.SENT, S.DELIVERED)):
        return Trigger.SETTLE
    if k is K.CANCEL and state.channel is Channel.VOICE and (state.answered or state.status is S.ACW):
        return Trigger.SETTLE
    return k


def _zones(state: ContactState, window: windows.CallingWindow) -> tuple[str, ...]:
    """The callee's time zones: those of its number, else the window's `default_tz`."""
    return (windows.zones_for_number(state.phone) if state.phone else ()) or (window.default_tz,)


@dataclass(frozen=True, slots=True)
class Held:
    """A due dial that may not be placed now: the trigger the tables know it by, until when, and why."""

    trigger: Trigger
    until: datetime
    why: str


def _held_back(state: ContactState, signal: Signal, now: datetime) -> Held | None:
    """Why a due dial may not be placed now and until when: the callee's calling window (every zone of the
    number inside it), then the number's caps over every campaign (docs/lawful-calling.md)."""
    if signal.window is not None:
        opens = windows.opens_at(signal.window, _zones(state, signal.window), now)  # `now` when open
        if opens is None or opens > now:
            return Held(Trigger.OUTSIDE_WINDOW, opens or now + WINDOW_RECHECK, "outside_window")
    if signal.limits is not None and signal.history is not None:
        blocked = caps.check(signal.limits, signal.history, now)
        if blocked is not None:
            return Held(Trigger.NUMBER_CAPPED, blocked.until, blocked.reason)
    return None


def _amd_waits(state: ContactState) -> bool:
    return state.amd is not None and state.amd.enabled and state.amd.waits(state.mode is Mode.PREDICTIVE)


def _verdict(state: ContactState, answered_by: str) -> Trigger:
    """AMD's verdict read with the contact's rules (gateway/domain/answering.py)."""
    action = state.amd.machine_action(answered_by, state.mode is Mode.PREDICTIVE) if state.amd else None
    if action is None or action is MachineAction.CONTINUE:
        return Trigger.AMD_HUMAN
    if action is MachineAction.HANGUP:
        return Trigger.AMD_MACHINE
    return Trigger.AMD_MESSAGE if answered_by in MACHINE_ENDS else Trigger.AMD_MACHINE_WAIT


def _amd_result(signal: Signal) -> dict[str, Any]:
    return {name: signal.evidence[name] for name in AMD_FACTS if name in signal.evidence}


def _evidence(signal: Signal, trigger: str) -> dict[str, Any]:
    ev: dict[str, Any] = {"source": "gateway", "kind": str(trigger)}
    ev.update(signal.evidence)
    return ev


def _apply(
    state: ContactState, signal: Signal, trigger: str, target: Target, now: datetime, held: Held | None = None
) -> Decision:
    if isinstance(target, Absorb):
        return Decision(state, absorbed=target.why)
    if isinstance(target, Refuse):
        return Decision(state, refused=target.code)
    if isinstance(target, Stay):
        return _stay(state, signal, trigger, now)
    if isinstance(target, AfterPrompt):  # gather, else transfer to connect_to, else hang up; no event
        return Decision(state, effects=(_after_prompt(state),))
    if isinstance(target, Listen):  # held silent while AMD listens
        assert state.amd is not None
        until_end = state.amd.on_machine is MachineAction.LEAVE_MESSAGE
        return Decision(
            replace_state(state, answered=True, updated_at=now), effects=(fx.ListenAmd(state.amd, until_end),)
        )
    if isinstance(target, Note):  # a verdict kept for the next event (a machine awaiting its greeting's end)
        waiting = trigger is Trigger.AMD_MACHINE_WAIT
        new = replace_state(
            state,
            amd_result=_amd_result(signal),
            call_outcome="awaiting_greeting_end" if waiting else state.call_outcome,
            updated_at=now,
        )
        return Decision(new)
    if isinstance(target, MachineHangUp):
        new = replace_state(state, amd_result=_amd_result(signal), call_outcome="machine", updated_at=now)
        return Decision(new, effects=(fx.HangUp(),))
    if isinstance(target, Pressed):
        return _pressed(state, signal, now)
    if isinstance(target, Wait):  # not now: retry_scheduled until it may be dialled, no attempt spent
        assert held is not None  # the tables reach Wait only by a held dial's trigger
        moved = _move(state, signal, trigger, S.RETRY_SCHEDULED, held.until, now, target)
        event = moved.events[0]
        event = replace(event, evidence={**event.evidence, "kind": held.why})
        return replace(moved, events=(event,))
    if isinstance(target, AfterTransfer):  # the outcome kept for the hangup's evidence; we leave either way
        new = replace_state(state, transfer=_transfer_outcome(signal), updated_at=now)
        return Decision(new, effects=(fx.HangUp(),))
    retry_at: datetime | None = None
    if isinstance(target, Attempt | Abort):
        new_status = target.status
    elif isinstance(target, Retry):
        new_status, retry_at = _retry(state, str(signal.kind), target, now)
    elif isinstance(target, Answer):
        new_status = target.predictive if state.mode is Mode.PREDICTIVE else target.other
    elif isinstance(target, AfterCall):
        new_status, retry_at = _after_call(state, signal, now)
    elif isinstance(target, LeaveMessage):
        new_status = S.CALL_IN_PROGRESS
    elif isinstance(target, Abandon):
        new_status = S.ABANDONED
    else:
        new_status = target
    return _move(state, signal, trigger, new_status, retry_at, now, target)


def _on_answer(state: ContactState) -> tuple[Effect, ...]:
    """What the contact asked to happen on answer: its prompt, else a transfer to its `connect_to` (SPEC
    §5.1), else nothing."""
    if state.prompt:
        return (fx.PlayPrompt(state.prompt),)
    return (fx.Transfer(state.connect_to),) if state.connect_to else ()


def _after_prompt(state: ContactState) -> Effect:
    """The prompt ended: digits are gathered when the contact asks for them (once per call), a person is
    transferred to the contact's `connect_to` (the dial's, else `sip.connect_to`, applied at intake), and
    every other call is hung up — a machine that got its message is never transferred."""
    if state.gather is not None and state.pressed is None and state.call_outcome != "message":
        return fx.Gather(state.gather)
    if state.connect_to and state.call_outcome != "message":
        return fx.Transfer(state.connect_to)
    return fx.HangUp()


def _pressed(state: ContactState, signal: Signal, now: datetime) -> Decision:
    """A gather ended: what the input means (the contact's `digits` map), carried by the call's end."""
    pressed = str(signal.evidence.get("digits") or "")
    action = digit_action(state.digit_map, pressed)
    outcome = str(action) if action is not None else "no_input"
    new = replace_state(state, pressed=pressed, call_outcome=outcome, updated_at=now)
    effects: list[Effect] = []
    if action is DigitAction.OPT_OUT and state.phone:
        effects.append(fx.BlacklistNumber(state.phone))  # in this decision's transaction
        effects.append(fx.NoteNumber("opt_out"))
    if action is DigitAction.TRANSFER and state.connect_to:
        effects.append(fx.Transfer(state.connect_to))
    else:
        effects.append(fx.HangUp())
    return Decision(new, effects=tuple(effects))


def _after_call(state: ContactState, signal: Signal, now: datetime) -> tuple[Status, datetime | None]:
    """The call ended after it was answered (AfterCall)."""
    if state.call_outcome == "machine":  # retried like `unreachable`, by the policy
        return _retry(state, "unreachable", Retry(S.COMPLETED_WITHOUT_ANSWER), now)
    if state.call_outcome == "retry":  # the callee asked for another call
        return _retry(state, "retry", Retry(S.COMPLETED_WITHOUT_ANSWER, always=True), now)
    if state.status is S.CALLING:  # held for the verdict: the callee left before it
        return S.CANCELED_BY_CLIENT, None
    return (S.ACW if state.wrapup else S.SUCCESS), None


def _transfer_outcome(signal: Signal) -> str:
    """`ok`, or `failed: <code> <reason>` (the REFER refused, or the NOTIFY's final was not a 2xx)."""
    ev = signal.evidence
    if ev.get("ok"):
        return "ok"
    code = ev.get("sip_code")
    return f"failed: {code if code is not None else ''} {ev.get('reason') or ''}".strip()


def _retry(state: ContactState, kind: str, rule: Retry, now: datetime) -> tuple[Status, datetime | None]:
    """Retried when `kind` is in the policy's `retry_on` (or the rule retries always) and attempts remain."""
    policy = state.policy
    allowed = rule.always or kind == K.GATEWAY_RESTART or kind in policy.retry_on
    if allowed and not state.no_retry and state.attempt < policy.max_attempts:
        return S.RETRY_SCHEDULED, policy.retry_at(state.attempt, now, rule.at_least_s)
    return rule.final, None


def _stay(state: ContactState, signal: Signal, trigger: str, now: datetime) -> Decision:
    k = signal.kind
    effects: list[Effect] = []
    new = state
    if trigger is Trigger.SETTLE:
        new = replace_state(state, no_retry=True)
    elif k in (K.BCW_ELAPSED, K.CALL_NOW):
        effects.append(fx.Enqueue(now, PRIORITY_DUE))
    elif k is K.WA_ACCEPTED and signal.wamid:
        new = replace_state(state, wamid=signal.wamid)
        effects.append(fx.MapWamid(signal.wamid))
    elif k in (K.WA_AMBIGUOUS, K.GATEWAY_RESTART):
        wait = signal.duration_s if signal.duration_s is not None else DEFAULT_AMBIGUOUS_TIMEOUT_S
        effects.append(fx.StartTimer(TimerKind.AMBIGUOUS, now + timedelta(seconds=wait)))
    if new is not state:
        new = replace_state(new, updated_at=now)
    return Decision(new, effects=tuple(effects), absorbed=None if (effects or new is not state) else "no_change")


def replace_state(state: ContactState, **changes: Any) -> ContactState:
    return state.model_copy(update=changes)


def _move(
    state: ContactState,
    signal: Signal,
    trigger: str,
    new_status: Status,
    retry_at: datetime | None,
    now: datetime,
    target: Target,
) -> Decision:
    """Move to `new_status`. What reaches the outside follows `target`, the transition the table chose
    (SPEC §9): only an `Attempt` starts one (attempt + 1, Dial/Send), only an `Abort` of a call in
    flight CANCELs it, only an `Answer` plays the contact's prompt or transfers the call. The signal
    contributes evidence and call facts (answered, talk time, the channel's transfer target), never a
    contact with the number."""
    old = state.status
    changes: dict[str, Any] = {"status": new_status, "retry_at": retry_at, "updated_at": now}
    effects: list[Effect] = []
    if old in QUEUEABLE:
        effects.append(fx.Dequeue())
    if old in TIMED:
        effects.append(fx.CancelTimers())
    k = signal.kind
    final = is_final(state.channel, new_status)
    attempt = state.attempt

    if isinstance(target, Attempt):  # entering calling / in_progress: a new attempt starts
        attempt += 1
        changes.update(attempt=attempt, in_flight=True, answered=False, no_retry=False, wamid=None, transfer=None)
        changes.update(amd_result=None, call_outcome=None, pressed=None)
        if state.channel is Channel.VOICE:  # the caller ID this attempt is placed with: the dial's over the campaign's
            caller = state.caller.over(signal.caller) if state.caller is not None else signal.caller
            changes["attempt_caller"] = None if caller is None or caller.empty else caller
        if state.attempt == 0:
            effects.append(fx.CountDialed())
        if state.channel is Channel.VOICE:
            effects.append(fx.NoteNumber("attempt"))  # the caps over every campaign count it
        effects.append(fx.Dial(attempt) if state.channel is Channel.VOICE else fx.Send(attempt))
    elif k is K.ANSWERED:
        changes["answered"] = True
    elif k is K.AMD:
        changes["amd_result"] = _amd_result(signal)
    elif k in (K.HANGUP, K.CLIENT_HANGUP):
        changes.update(in_flight=False)
        if state.answered and signal.duration_s:
            effects.append(fx.AddTalkTime(signal.duration_s))
    if k is K.REJECTED and (
        signal.evidence.get("sip_code") in REFUSAL_SIP or signal.evidence.get("q850_cause") == REFUSAL_Q850
    ):
        effects.append(fx.NoteNumber("refusal"))
    if isinstance(target, Answer) and new_status is S.AWAITING_OPERATOR and state.abandon_after_s is not None:
        # a person waits for an operator: at most abandon_after_s from the end of their greeting, which a
        # human verdict reports `after_greeting_silence` late (docs/lawful-calling.md)
        # (`ABANDON_MARGIN_S` earlier still: the commit and the message's first packet fit inside it)
        late = state.amd.after_greeting_silence_ms / 1000 if state.amd is not None and k is K.AMD else 0.0
        wait = max(0.0, state.abandon_after_s - late - ABANDON_MARGIN_S)
        effects.append(fx.StartTimer(TimerKind.ABANDON, now + timedelta(seconds=wait)))
    if old is S.AWAITING_OPERATOR and state.in_flight and new_status in (S.CALL_IN_PROGRESS, S.CANCELED_BY_CLIENT):
        effects.append(fx.CountLiveAnswer(abandoned=False))  # the person reached an operator (or left first)
    if isinstance(target, Abandon):
        effects.append(fx.CountLiveAnswer(abandoned=True))
        effects.append(fx.NoteNumber("abandon"))
        prompt = state.abandon_prompt
        effects.append(fx.PlayPrompt(prompt, then_hang_up=True) if prompt else fx.HangUp())
    if isinstance(target, Answer):  # the call does what the contact asked on answer
        if k is K.ANSWERED and state.amd is not None and state.amd.enabled:  # AMD listens beside it
            effects.append(fx.ListenAmd(state.amd, until_end=False))
        effects.extend(_on_answer(state))
    if isinstance(target, LeaveMessage):  # the machine's greeting ended: its message
        changes.update(amd_result=_amd_result(signal) or state.amd_result, call_outcome="message")
        message = (state.amd.message_prompt if state.amd else None) or state.prompt
        effects.append(fx.PlayPrompt(message) if message else fx.HangUp())
    if isinstance(target, Abort) and state.in_flight and state.channel is Channel.VOICE:
        effects.append(fx.CancelCall())
    if k is K.WA_ACCOUNT:
        code, title = signal.evidence.get("wa_error_code"), signal.evidence.get("wa_error_title")
        effects.append(fx.PauseCampaign(f"whatsapp_account_error:{code}" + (f" {title}" if title else "")))

    if new_status is S.RETRY_SCHEDULED and retry_at is not None:
        changes.update(in_flight=False, answered=False)
        effects.append(fx.Enqueue(retry_at, PRIORITY_DUE))
    elif new_status is S.BCW:
        if state.bcw_s > 0:
            effects.append(fx.StartTimer(TimerKind.BCW, now + timedelta(seconds=state.bcw_s)))
        else:
            effects.append(fx.Enqueue(now, PRIORITY_DUE))
    elif new_status is S.ACW:
        changes["in_flight"] = False
        effects.append(fx.StartTimer(TimerKind.ACW, now + timedelta(seconds=state.acw_timeout_s)))
    elif new_status is S.OPERATOR_ASSIGNED and state.mode is not Mode.PREVIEW:
        effects.append(fx.Enqueue(now, PRIORITY_DUE))
    if final:
        changes.update(in_flight=False)

    new_state = replace_state(state, **changes)
    evidence = _evidence(signal, trigger)
    if k in (K.HANGUP, K.CLIENT_HANGUP) and state.transfer is not None:
        evidence["transfer"] = state.transfer  # the call's transfer outcome, with its end
    if state.amd_result and k is not K.AMD:  # the verdict rides on the call's next event (no wait)
        evidence.update({name: value for name, value in state.amd_result.items() if name not in evidence})
    if state.call_outcome and state.call_outcome != "awaiting_greeting_end":
        evidence.setdefault("outcome", state.call_outcome)
    if state.pressed is not None:
        evidence.setdefault("digits", state.pressed)
    event = EventDraft(
        sequence=state.sequence + 1,
        status=new_status,
        previous_status=old,
        final=final,
        attempt=attempt,
        retry_at=retry_at,
        evidence=evidence,
    )
    new_state = replace_state(new_state, sequence=event.sequence)
    return Decision(new_state, events=(event,), effects=tuple(effects))


def _create(state: ContactState, signal: Signal, now: datetime) -> Decision:
    if state.sequence != 0:
        return Decision(state, refused="contact_final" if is_final(state.channel, state.status) else "contact_busy")
    first = EventDraft(1, S.INITIAL, None, False, 0, None, {"source": "command", "kind": "created"})
    state = replace_state(state, status=S.INITIAL, sequence=1, phone=signal.phone, created_at=now, updated_at=now)
    if signal.phone is None:
        bad = EventDraft(
            2,
            S.INVALID_RECORD,
            S.INITIAL,
            True,
            0,
            None,
            {"source": "gateway", "kind": "invalid_number", **signal.evidence},
        )
        return Decision(replace_state(state, status=S.INVALID_RECORD, sequence=2), events=(first, bad))
    effects: tuple[Effect, ...] = ()
    if state.mode is not Mode.PREVIEW or state.channel is Channel.WHATSAPP:
        effects = (fx.Enqueue(now, PRIORITY_NEW),)
    return Decision(state, events=(first,), effects=effects)


__all__ = ["Decision", "EventDraft", "decide", "replace"]
