"""Who answered and what they pressed, decided by the voice table (issue 24, docs/voice.md §6.3, §6.4).

Pure decide() with a fake clock: the verdict and the digits are signals, and what the call does next (hang
up, leave the message after the greeting, gather, blacklist the number, retry) are effects of table rows."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.domain import effects as fx
from gateway.domain.answering import AmdSettings, DigitAction, GatherSettings, MachineAction
from gateway.domain.decide import Decision, decide
from gateway.domain.policy import Policy
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState, Mode
from gateway.domain.statuses import Status
from tests.unit.test_answer_effects import AGENTS, Clock, calling  # the same fake clock and ringing call

S = Status
K = Kind


def sig(kind: Kind, attempt: int = 1, **evidence: Any) -> Signal:
    duration = evidence.get("duration_s")
    return Signal(kind, {"source": "sip", "kind": str(kind), **evidence}, attempt=attempt, duration_s=duration)


def verdict(answered_by: str, cause: str = "HUMAN", ms: int = 1200) -> Signal:
    return sig(K.AMD, answered_by=answered_by, amd_cause=cause, amd_ms=ms)


def run(state: ContactState, clock: Clock, *signals: Signal) -> tuple[ContactState, list[Decision]]:
    out = []
    for signal in signals:
        d = decide(state, signal, clock())
        assert d.illegal is None, d.illegal
        out.append(d)
        state = d.state
    return state, out


def test_held_call_waits_silent_for_the_verdict_and_a_person_gets_the_answer_with_it() -> None:
    state, clock = calling(amd=AmdSettings(wait=True), prompt="hello.wav")
    state, (answered, human) = run(state, clock, sig(K.ANSWERED), verdict("human", "HUMAN", 900))
    assert answered.events == () and state.answered
    assert answered.effects == (fx.ListenAmd(AmdSettings(wait=True), until_end=False),)
    assert human.events[0].status is S.CALL_IN_PROGRESS
    ev = human.events[0].evidence
    assert (ev["answered_by"], ev["amd_cause"], ev["amd_ms"]) == ("human", "HUMAN", 900)
    assert fx.PlayPrompt("hello.wav") in human.effects


@pytest.mark.parametrize("mode", [Mode.PROGRESSIVE, Mode.PREDICTIVE])
def test_a_machine_is_hung_up_on_and_retried_like_unreachable_never_transferred(mode: Mode) -> None:
    state, clock = calling(mode, amd=AmdSettings(wait=True), connect_to=AGENTS)
    state, (_, machine, end) = run(
        state, clock, sig(K.ANSWERED), verdict("machine_start", "LONGGREETING"), sig(K.HANGUP, duration_s=3.0)
    )
    assert machine.events == () and machine.effects == (fx.HangUp(),)
    assert not any(isinstance(e, fx.Transfer) for d in (machine, end) for e in d.effects)
    (event,) = end.events
    assert event.status is S.RETRY_SCHEDULED  # unreachable is in the default retry_on
    assert event.evidence["answered_by"] == "machine_start" and event.evidence["outcome"] == "machine"


def test_a_machine_with_no_attempts_left_is_not_reached() -> None:
    state, clock = calling(amd=AmdSettings(wait=True), policy=Policy(max_attempts=1))
    state, (*_, end) = run(state, clock, sig(K.ANSWERED), verdict("machine_start"), sig(K.HANGUP, duration_s=2.0))
    assert end.events[0].status is S.COMPLETED_WITHOUT_ANSWER


def test_leave_message_waits_for_the_beep_then_plays_and_never_transfers() -> None:
    amd = AmdSettings(on_machine=MachineAction.LEAVE_MESSAGE, message_prompt="message.wav")
    state, clock = calling(amd=amd, prompt="hello.wav", connect_to=AGENTS)
    state, (listen, machine, beep, prompt_done, end) = run(
        state,
        clock,
        sig(K.ANSWERED),
        verdict("machine_start", "LONGGREETING"),
        sig(K.MACHINE_END, answered_by="machine_end_beep"),
        sig(K.PROMPT_DONE),
        sig(K.HANGUP, duration_s=12.0),
    )
    assert listen.effects == (fx.ListenAmd(amd, until_end=True),)  # leave_message holds the call
    assert machine.events == () and machine.effects == ()
    assert beep.events[0].status is S.CALL_IN_PROGRESS
    assert beep.events[0].evidence["answered_by"] == "machine_end_beep"
    assert fx.PlayPrompt("message.wav") in beep.effects
    assert prompt_done.effects == (fx.HangUp(),)  # a machine that got its message is not transferred
    assert end.events[0].status is S.SUCCESS and end.events[0].evidence["outcome"] == "message"


def test_without_wait_the_answer_moves_on_at_once_and_the_verdict_rides_on_the_end() -> None:
    state, clock = calling(amd=AmdSettings(), connect_to=AGENTS)
    state, (answered, human, end) = run(state, clock, sig(K.ANSWERED), verdict("human"), sig(K.HANGUP, duration_s=30.0))
    assert answered.events[0].status is S.CALL_IN_PROGRESS
    assert answered.effects[-2:] == (fx.ListenAmd(AmdSettings(), until_end=False), fx.Transfer(AGENTS))
    assert human.events == ()
    assert end.events[0].status is S.SUCCESS and end.events[0].evidence["answered_by"] == "human"


def test_without_wait_a_machine_verdict_still_hangs_up_and_retries() -> None:
    state, clock = calling(amd=AmdSettings())
    state, (_, machine, end) = run(state, clock, sig(K.ANSWERED), verdict("machine_start"), sig(K.HANGUP, duration_s=4))
    assert machine.effects == (fx.HangUp(),)
    assert end.events[0].status is S.RETRY_SCHEDULED


def test_predictive_never_hands_a_machine_to_an_operator_even_on_continue() -> None:
    state, clock = calling(Mode.PREDICTIVE, amd=AmdSettings(on_machine=MachineAction.CONTINUE), connect_to=AGENTS)
    state, (listen, machine) = run(state, clock, sig(K.ANSWERED), verdict("machine_start"))
    assert listen.events == ()  # predictive always waits for the verdict
    assert machine.effects == (fx.HangUp(),)


def test_continue_treats_a_machine_as_answered_outside_predictive() -> None:
    state, clock = calling(amd=AmdSettings(wait=True, on_machine=MachineAction.CONTINUE), connect_to=AGENTS)
    state, (_, machine) = run(state, clock, sig(K.ANSWERED), verdict("machine_start"))
    assert machine.events[0].status is S.CALL_IN_PROGRESS and fx.Transfer(AGENTS) in machine.effects


def test_a_fax_is_hung_up_on_whatever_the_campaign_says() -> None:
    state, clock = calling(amd=AmdSettings(wait=True, on_machine=MachineAction.CONTINUE))
    state, (_, fax) = run(state, clock, sig(K.ANSWERED), verdict("fax", "FAX"))
    assert fax.effects == (fx.HangUp(),)


def test_unknown_is_taken_for_a_person() -> None:
    state, clock = calling(amd=AmdSettings(wait=True))
    state, (_, unknown) = run(state, clock, sig(K.ANSWERED), verdict("unknown", "NOAUDIODATA"))
    assert unknown.events[0].status is S.CALL_IN_PROGRESS


def test_the_callee_leaving_while_held_for_the_verdict_is_canceled_by_client() -> None:
    state, clock = calling(amd=AmdSettings(wait=True))
    state, (_, gone) = run(state, clock, sig(K.ANSWERED), sig(K.CLIENT_HANGUP, duration_s=1.0))
    assert gone.events[0].status is S.CANCELED_BY_CLIENT


def test_a_verdict_after_the_call_ended_is_stale() -> None:
    state, clock = calling(amd=AmdSettings())
    state, _ = run(state, clock, sig(K.ANSWERED), sig(K.HANGUP, duration_s=1.0))
    late = decide(state, verdict("machine_start"), clock())
    assert late.absorbed == "stale" and late.effects == ()


GATHER = GatherSettings(max_digits=1, timeout_s=5)
DIGITS = {"1": DigitAction.CONFIRM, "9": DigitAction.OPT_OUT, "0": DigitAction.TRANSFER, "2": DigitAction.RETRY}


def gathering(**kw: Any) -> tuple[ContactState, Clock]:
    state, clock = calling(prompt="menu.wav", gather=GATHER, digit_map=DIGITS, connect_to=AGENTS, **kw)
    state, (_, done) = run(state, clock, sig(K.ANSWERED), sig(K.PROMPT_DONE))
    assert done.effects == (fx.Gather(GATHER),)  # after the prompt: digits, not the transfer
    return state, clock


def test_confirm_succeeds_with_the_digits() -> None:
    state, clock = gathering()
    state, (pressed, end) = run(state, clock, sig(K.DIGITS, digits="1"), sig(K.HANGUP, duration_s=9.0))
    assert pressed.events == () and pressed.effects == (fx.HangUp(),)
    ev = end.events[0]
    assert ev.status is S.SUCCESS and (ev.evidence["digits"], ev.evidence["outcome"]) == ("1", "confirm")


def test_opt_out_blacklists_the_number_in_the_same_decision() -> None:
    state, clock = gathering()
    state, (pressed, end) = run(state, clock, sig(K.DIGITS, digits="9"), sig(K.HANGUP, duration_s=9.0))
    assert pressed.effects == (fx.BlacklistNumber("+420601234567"), fx.NoteNumber("opt_out"), fx.HangUp())
    assert end.events[0].status is S.SUCCESS and end.events[0].evidence["outcome"] == "opt_out"


def test_transfer_refers_to_connect_to() -> None:
    state, clock = gathering()
    state, (pressed,) = run(state, clock, sig(K.DIGITS, digits="0"))
    assert pressed.effects == (fx.Transfer(AGENTS),)


def test_retry_ends_the_attempt_and_retries_whatever_retry_on_says() -> None:
    state, clock = gathering(policy=Policy(retry_on=()))
    state, (_, end) = run(state, clock, sig(K.DIGITS, digits="2"), sig(K.HANGUP, duration_s=9.0))
    assert end.events[0].status is S.RETRY_SCHEDULED and end.events[0].evidence["outcome"] == "retry"
    # the next attempt starts clean: no verdict, digits or outcome of the last call
    redial = decide(end.state, Signal(K.DIAL_DUE), clock())
    assert (redial.state.pressed, redial.state.call_outcome, redial.state.amd_result) == (None, None, None)


@pytest.mark.parametrize("pressed", ["", "7", "11"])
def test_no_input_or_a_key_that_maps_to_nothing_hangs_up_as_no_input(pressed: str) -> None:
    state, clock = gathering()
    state, (p, end) = run(state, clock, sig(K.DIGITS, digits=pressed), sig(K.HANGUP, duration_s=9.0))
    assert p.effects == (fx.HangUp(),)
    assert end.events[0].status is S.SUCCESS and end.events[0].evidence["outcome"] == "no_input"
