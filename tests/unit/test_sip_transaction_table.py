"""The client transactions' tables (sip/transaction.py): every row driven and checked against what it says,
an illegal (state, event) named, duplicate rows and missing rows refused at import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from sip import transaction as txmod
from sip.message import Request, Response
from sip.transaction import (
    INVITE_ROWS,
    INVITE_TABLE,
    NON_INVITE_TABLE,
    TIMER_STATES,
    Do,
    Ev,
    IllegalTransition,
    Input,
    InviteClientTransaction,
    NonInviteClientTransaction,
    ResponseReceived,
    State,
    Terminated,
    TimedOut,
    Timer,
    Transmit,
)
from sip.transitions import table
from tests.unit.test_sip_transaction import invite
from tests.unit.test_sip_transaction import response as _response

Tx = InviteClientTransaction | NonInviteClientTransaction


def request(method: str) -> Request:
    return (
        invite() if method == "INVITE" else Request(method, "sip:pbx", invite().headers.replace("CSeq", f"1 {method}"))
    )


def response(status: int, method: str) -> Response:
    return _response(status, "R", method=method)


STATUS = {Ev.PROVISIONAL: 180, Ev.SUCCESS: 200, Ev.FAILURE: 486, Ev.FINAL: 200}
# how each state is reached from a new transaction (UDP, so every timer of the state is armed)
PATH: dict[tuple[bool, State], list[int | str]] = {
    (True, State.CALLING): [],
    (True, State.PROCEEDING): [180],
    (True, State.ACCEPTED): [200],
    (True, State.COMPLETED): [486],
    (True, State.TERMINATED): [486, "timer"],
    (False, State.TRYING): [],
    (False, State.PROCEEDING): [100],
    (False, State.COMPLETED): [200],
    (False, State.TERMINATED): [200, "timer"],
}


def reach(invite: bool, state: State) -> Tx:
    method = "INVITE" if invite else "OPTIONS"
    tx: Tx = (InviteClientTransaction if invite else NonInviteClientTransaction)(request(method), False, 0.0)
    tx.events()
    now = 0.0
    for step in PATH[(invite, state)]:
        now += 0.1
        if step == "timer":
            now = tx.get_timer() or now
            tx.handle_timer(now)
        else:
            assert isinstance(step, int)
            tx.receive(response(step, method), now)
    assert tx.state is state
    return tx


ROWS = [(True, s, e) for s, e in INVITE_TABLE] + [(False, s, e) for s, e in NON_INVITE_TABLE]


@pytest.mark.parametrize(("invite", "state", "event"), ROWS, ids=lambda v: str(v))
def test_every_row_does_what_it_says(invite: bool, state: State, event: Ev) -> None:
    """Each row, reached through the public API, run once: the next state, the events in the order of its
    actions, the timer it starts, and no timer left that the new state does not allow."""
    target, actions = (INVITE_TABLE if invite else NON_INVITE_TABLE)[(state, event)]
    tx = reach(invite, state)
    method = tx.request.method
    now = 100.0
    if event in STATUS:
        message: Response | None = response(STATUS[event], method)
    else:
        message = None
        timer = Timer(event.value[-1].upper())
        assert timer in tx.due, f"Timer {timer} not armed in {state}"
    tx._dispatch(Input(now, event, message))
    out = tx.events()
    assert tx.state is target
    expected: list[object] = []
    for action in actions:
        if action is Do.PASS_UP:
            expected.append(ResponseReceived(message))  # type: ignore[arg-type]
        elif action is Do.PASS_UP_AGAIN:
            expected.append(ResponseReceived(message, retransmission=True))  # type: ignore[arg-type]
        elif action in (Do.SEND_ACK, Do.RESEND_ACK):
            expected.append(
                Transmit(txmod.ack_for(tx.request, message or response(486, method)), action is Do.RESEND_ACK)
            )
        elif action in (Do.RESEND_A, Do.RESEND_E):
            expected.append(Transmit(tx.request, retransmission=True))
        elif action is Do.TIME_OUT:
            expected.append(TimedOut(event.value[-1].upper()))
        elif action is Do.TERMINATE:
            expected.append(Terminated())
        else:  # START_D/M/K: the timer armed from now
            assert tx.due[Timer(action.value[-1].upper())] >= now
    assert out == expected
    assert all(target in TIMER_STATES[t] for t in tx.due)


def test_every_action_named_in_the_tables_exists() -> None:
    for built in (INVITE_TABLE, NON_INVITE_TABLE):
        for _target, actions in built.values():
            for action in actions:
                assert callable(getattr(InviteClientTransaction, f"_{action.value}", None)), action


def test_each_timers_rows_are_the_states_it_runs_in() -> None:
    assert set(TIMER_STATES) == set(Timer) == set(txmod.TIMER_EVENT)
    for timer, event in txmod.TIMER_EVENT.items():
        rows = {s for (s, e) in (*INVITE_TABLE, *NON_INVITE_TABLE) if e is event}
        assert rows == TIMER_STATES[timer]


def test_an_illegal_pair_is_named() -> None:
    tx = reach(False, State.TRYING)
    with pytest.raises(IllegalTransition) as caught:
        tx._dispatch(Input(1.0, Ev.TIMER_K))
    assert str(caught.value) == "non-INVITE client transaction: no transition for event 'timer_k' in state 'trying'"
    assert caught.value.state is State.TRYING and caught.value.event is Ev.TIMER_K


def test_a_timer_armed_where_it_cannot_run_is_a_named_bug_through_handle_timer() -> None:
    tx = reach(True, State.PROCEEDING)
    tx.due[Timer.B] = 5.0  # B stops with the first provisional (§17.1.1.2): a bug elsewhere put it back
    with pytest.raises(IllegalTransition, match=r"^INVITE client transaction: .*'timer_b' in state 'proceeding'"):
        tx.handle_timer(5.0)


def test_an_invite_response_event_never_reaches_a_non_invite_table() -> None:
    tx = reach(False, State.PROCEEDING)
    with pytest.raises(IllegalTransition, match="'success' in state 'proceeding'"):
        tx._dispatch(Input(1.0, Ev.SUCCESS, response(200, "OPTIONS")))


def test_two_rows_for_one_pair_are_refused() -> None:
    with pytest.raises(AssertionError, match=r"two rows for \(calling, provisional\)"):
        table([*INVITE_ROWS, ((State.CALLING,), Ev.PROVISIONAL, State.PROCEEDING, ())])


def _import_edited(old: str, new: str) -> None:
    source = Path(txmod.__file__).read_text()
    assert source.count(old) == 1
    spec = importlib.util.spec_from_loader("sip._edited_transaction", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "sip"
    sys.modules[spec.name] = module
    try:
        exec(compile(source.replace(old, new), txmod.__file__, "exec"), module.__dict__)
    finally:
        del sys.modules[spec.name]


def test_a_duplicate_row_is_refused_at_import() -> None:
    row = "    ((CALLING,), Ev.TIMER_A, STAY, (Do.RESEND_A,)),\n"
    with pytest.raises(AssertionError, match=r"two rows for \(calling, timer_a\)"):
        _import_edited(row, row + row)


def test_a_response_without_a_row_in_some_state_is_refused_at_import() -> None:
    row = "    ((COMPLETED,), Ev.SUCCESS, STAY, ()),\n"
    with pytest.raises(AssertionError, match="responses that can come in any state lack rows"):
        _import_edited(row, "")


def test_a_timer_row_outside_its_states_is_refused_at_import() -> None:
    row = "    ((COMPLETED,), Ev.TIMER_D, TERMINATED, (Do.TERMINATE,)),\n"
    with pytest.raises(AssertionError, match="Timer D has rows in"):
        _import_edited(row, row.replace("(COMPLETED,)", "(COMPLETED, ACCEPTED)"))
    _import_edited(row, row)  # the source as it is imports


def test_timer_b_at_the_same_instant_as_a_gives_up_without_a_resend() -> None:
    tx = reach(True, State.CALLING)
    tx.due[Timer.A] = tx.due[Timer.B]
    assert tx.handle_timer(tx.due[Timer.B]) == [TimedOut("B"), Terminated()]
