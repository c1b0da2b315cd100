"""SPEC §9, "the wire follows the transition", as properties of decide() over every channel, mode and table.

An effect that reaches the outside (Dial, Send) appears if and only if the contact enters its channel's
contacting status (`calling` / `in_progress`) with attempt + 1; never on a transition into a status that
says the contact was not contacted; CancelCall only while a call of the current attempt is in flight.
What an answered call does (PlayPrompt, Transfer, HangUp: RTP, a REFER, a BYE) follows the table too: the
prompt or the transfer the contact asked for only on the transition that answers the call, and after it
only on the reports of the call that is up (`prompt_done`, `transfer_done`), without a status change.
Checked on states reached by random signal sequences and on arbitrary states of every status.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain import effects as fx
from gateway.domain.decide import Decision, decide
from gateway.domain.policy import Policy
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState, Mode, contacts_budget_spent
from gateway.domain.statuses import STATUSES, Channel, Status
from gateway.domain.tables import CONTACTING
from tests.unit.test_properties import signals  # any signal but CREATE, with any facts

T0 = datetime(2026, 11, 29, tzinfo=UTC)
S = Status
K = Kind
# a contact in one of these was not contacted by the transition that put it there
NOT_CONTACTED = frozenset(
    {S.BLACKLISTED, S.PLAN_LIMIT_EXCEEDED, S.INVALID_RECORD, S.REJECTED_BY_OPERATOR, S.CANCELED_BY_ADMIN, S.REMOVED}
)
STARTS = (fx.Dial, fx.Send)  # a new attempt: an INVITE, a Cloud API send
CALL_CONTROL = (fx.PlayPrompt, fx.Transfer, fx.HangUp)  # on an answered call: RTP, a REFER, a BYE
OUTSIDE = (*STARTS, fx.CancelCall, *CALL_CONTROL)
CALL_UP = (S.CALL_IN_PROGRESS, S.AWAITING_OPERATOR)
TARGETS = (None, "sip:agents@queue.example")

# DIAL_DUE is what asks for a contact: draw it often, with every combination of its facts
dial_due = st.builds(
    Signal,
    kind=st.just(K.DIAL_DUE),
    blacklisted=st.booleans(),
    contacts_dialed=st.integers(0, 3),
    max_contacts=st.one_of(st.none(), st.integers(0, 3)),
)
any_signal = st.one_of(signals, dial_due)


def check(before: ContactState, signal: Signal, d: Decision) -> None:
    outside = [e for e in d.effects if isinstance(e, STARTS)]
    contacting = CONTACTING[before.channel]
    enters = (
        len(d.events) == 1
        and d.events[0].status is contacting
        and before.status is not contacting
        and d.state.attempt == before.attempt + 1
        and d.events[0].attempt == before.attempt + 1
    )
    assert bool(outside) == enters, (before.status, signal, d.events, d.effects)
    if outside:
        assert len(outside) == 1
        expected = fx.Dial if before.channel is Channel.VOICE else fx.Send
        assert outside[0] == expected(before.attempt + 1)
        assert d.state.in_flight
        spent = contacts_budget_spent(signal.contacts_dialed, signal.max_contacts)
        assert not signal.blacklisted and not (spent and before.attempt == 0)
    for e in d.events:
        if e.status in NOT_CONTACTED:
            assert not outside, (before.status, e.status)
            assert fx.CountDialed() not in d.effects  # the max_contacts budget counts contacts dialled
    if fx.CountDialed() in d.effects:
        assert outside and before.attempt == 0
    if fx.CancelCall() in d.effects:
        assert before.channel is Channel.VOICE and before.in_flight and before.status is S.CALLING
        assert not outside
    control = [e for e in d.effects if isinstance(e, CALL_CONTROL)]
    if control:
        assert before.channel is Channel.VOICE and len(control) == 1 and not outside
        assert not (before.status is S.AWAITING_OPERATOR and not before.in_flight)  # a call, not the wait before
        if d.events and signal.kind is K.ABANDON_ELAPSED:  # a person waited too long for an operator
            assert before.status is S.AWAITING_OPERATOR and before.in_flight and before.answered
            assert [e.status for e in d.events] == [S.ABANDONED] and control[0] == fx.HangUp()
        elif d.events:  # the answer (or a person's verdict): from calling into a call that is up
            assert signal.kind in (K.ANSWERED, K.AMD) and signal.attempt in (None, before.attempt)
            assert before.status is S.CALLING and before.in_flight
            answered = S.AWAITING_OPERATOR if before.mode is Mode.PREDICTIVE else S.CALL_IN_PROGRESS
            assert [e.status for e in d.events] == [answered]
            assert d.state.answered and d.state.in_flight
            target = before.connect_to
            assert control[0] == (fx.PlayPrompt(before.prompt) if before.prompt else fx.Transfer(target or ""))
        else:  # a report of the call that is up: the table's next step, no status change
            assert signal.kind in (K.PROMPT_DONE, K.TRANSFER_DONE, K.DIGITS)
            assert before.in_flight and before.answered and before.status in CALL_UP
            assert signal.attempt in (None, before.attempt) and d.state.status is before.status
            target = before.connect_to
            # DIGITS: no digits map here, nothing maps, the call is hung up
            if signal.kind in (K.DIGITS, K.TRANSFER_DONE) or not target:
                assert control[0] == fx.HangUp()
            else:
                assert control[0] == fx.Transfer(target)
    if d.illegal or d.absorbed or d.refused:
        assert not any(isinstance(e, OUTSIDE) for e in d.effects)


def fresh(
    channel: Channel, mode: Mode, max_attempts: int, prompt: str | None = None, connect_to: str | None = None
) -> ContactState:
    return ContactState(
        campaign_id="c",
        contact_id="k",
        channel=channel,
        mode=mode,
        policy=Policy(max_attempts=max_attempts, retry_on=("rejected", "unreachable", "failed")),
        prompt=prompt,
        connect_to=connect_to,
    )


@settings(max_examples=500, deadline=None)
@given(
    channel=st.sampled_from(list(Channel)),
    mode=st.sampled_from(list(Mode)),
    max_attempts=st.integers(1, 4),
    phone=st.sampled_from(["+420601234567", None]),
    prompt=st.sampled_from([None, "notice.wav"]),
    connect_to=st.sampled_from(TARGETS),
    seq=st.lists(any_signal, max_size=40),
)
def test_reachable_states(
    channel: Channel,
    mode: Mode,
    max_attempts: int,
    phone: str | None,
    prompt: str | None,
    connect_to: str | None,
    seq: list[Signal],
) -> None:
    d = decide(fresh(channel, mode, max_attempts, prompt, connect_to), Signal(K.CREATE, phone=phone), T0)
    assert not any(isinstance(e, OUTSIDE) for e in d.effects)  # creating a contact contacts nobody
    state, now = d.state, T0
    dials = 0
    for sig in seq:
        now += timedelta(seconds=1)
        d = decide(state, sig, now)
        check(state, sig, d)
        dials += sum(isinstance(e, STARTS) for e in d.effects)
        state = d.state
    assert dials == state.attempt  # one contact with the number per attempt, exactly


@settings(max_examples=1500, deadline=None)
@given(
    channel=st.sampled_from(list(Channel)),
    mode=st.sampled_from(list(Mode)),
    data=st.data(),
    attempt=st.integers(0, 3),
    in_flight=st.booleans(),
    answered=st.booleans(),
    no_retry=st.booleans(),
    prompt=st.sampled_from([None, "notice.wav"]),
    connect_to=st.sampled_from(TARGETS),
    signal=any_signal,
)
def test_any_state_of_any_table(
    channel: Channel,
    mode: Mode,
    data: st.DataObject,
    attempt: int,
    in_flight: bool,
    answered: bool,
    no_retry: bool,
    prompt: str | None,
    connect_to: str | None,
    signal: Signal,
) -> None:
    status = data.draw(st.sampled_from(list(STATUSES[channel])))
    state = fresh(channel, mode, 4, prompt, connect_to).model_copy(
        update={
            "status": status,
            "sequence": 2,
            "attempt": attempt,
            "in_flight": in_flight,
            "answered": answered,
            "no_retry": no_retry,
            "phone": "+420601234567",
        }
    )
    check(state, signal, decide(state, signal, T0))


def test_blacklisted_or_over_budget_when_due_is_not_dialled() -> None:
    """The defect of issue 10: the table chose `blacklisted` / `plan_limit_exceeded` and a Dial went out."""
    for channel in Channel:
        for facts, expected in (
            ({"blacklisted": True}, S.BLACKLISTED),
            ({"contacts_dialed": 5, "max_contacts": 5}, S.PLAN_LIMIT_EXCEEDED if channel is Channel.VOICE else S.ERROR),
        ):
            state = decide(fresh(channel, Mode.PROGRESSIVE, 3), Signal(K.CREATE, phone="+420601000111"), T0).state
            d = decide(state, Signal(K.DIAL_DUE, **facts), T0)  # type: ignore[arg-type]
            assert [e.status for e in d.events] == [expected]
            assert d.state.attempt == 0 and not d.state.in_flight
            assert not any(isinstance(e, (*OUTSIDE, fx.CountDialed)) for e in d.effects), d.effects


def test_blacklisted_in_retry_scheduled_is_not_dialled_again() -> None:
    state = decide(fresh(Channel.VOICE, Mode.PROGRESSIVE, 3), Signal(K.CREATE, phone="+420601000111"), T0).state
    state = decide(state, Signal(K.DIAL_DUE), T0).state
    state = decide(state, Signal(K.REJECTED, attempt=1), T0).state
    assert state.status is S.RETRY_SCHEDULED
    d = decide(state, Signal(K.DIAL_DUE, blacklisted=True), T0 + timedelta(minutes=5))
    assert [e.status for e in d.events] == [S.BLACKLISTED] and d.events[0].attempt == 1
    assert not any(isinstance(e, OUTSIDE) for e in d.effects)
