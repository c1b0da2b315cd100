"""Lawful calling in the dispatcher's turn (docs/lawful-calling.md), over a real SQLite file and a fixed
clock: the domain gets the campaign's window and caps and the number's history with every due dial;
held dials wait as queue rows; predictive campaigns place what their pacer allows, nothing without
operators."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.contract.topics import Topics
from gateway.domain import effects as fx
from gateway.domain import pacer as pacing
from gateway.domain.campaign import Action
from gateway.domain.decide import EventDraft
from gateway.domain.limits import Limits
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CampaignState, ContactState, Mode
from gateway.domain.statuses import Channel, Status
from gateway.domain.windows import CallingWindow
from gateway.engine.dispatcher import Dispatcher, observations
from gateway.engine.engine import Engine, Unit
from gateway.store.sqlite import SqliteStore
from metrics.recorder import Recorder

MONDAY_NOON = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)  # 13:00 in Prague (+420 numbers)
SATURDAY = CallingWindow(weekly={"sat": ("10:00-12:00",)}, margin_s=0)
SATURDAY_OPENS = datetime(2030, 1, 12, 9, 0, tzinfo=UTC)  # 10:00 CET


class Port:
    channel = Channel.VOICE
    max_concurrent = 1000
    max_rate = 1000.0

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []

    def active(self, campaign_id: str | None = None) -> int:
        return 0

    def active_counts(self) -> dict[str, int]:
        return {}

    def submit(self, effect: fx.Effect, contact: ContactState) -> None:
        assert isinstance(effect, fx.Dial)
        self.started.append((contact.campaign_id, contact.contact_id))

    async def run(self) -> None:
        await asyncio.Event().wait()


class Clock:
    def __init__(self) -> None:
        self.now = MONDAY_NOON

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Engine, Dispatcher, Port, Clock]]:
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    clock = Clock()
    engine = Engine(store, "gw", Topics("telgate"), Recorder("test"), clock=clock)
    port = Port()
    engine.ports[Channel.VOICE] = port
    task = asyncio.create_task(engine.run())
    yield engine, Dispatcher(engine, port), port, clock
    task.cancel()
    await store.close()


async def queue(
    engine: Engine, campaign: str, contacts: dict[str, str], mode: Mode = Mode.PROGRESSIVE, **camp: Any
) -> None:
    await engine.store.run(lambda txn: txn.put_campaign(CampaignState(campaign_id=campaign, **camp)))

    def create(unit: Unit) -> None:
        for contact_id, phone in contacts.items():
            state = ContactState(campaign_id=campaign, contact_id=contact_id, channel=Channel.VOICE, mode=mode)
            unit.apply((campaign, contact_id), Signal(Kind.CREATE, phone=phone), create=state)

    await engine.execute(create)


async def turn(engine: Engine, dispatcher: Dispatcher, **kw: Any) -> Any:
    return await engine.execute(functools.partial(dispatcher._turn, room=64, on_wire={}, **kw))


async def contact(engine: Engine, campaign: str, contact_id: str) -> ContactState:
    state = await engine.store.read(lambda t: t.get_contact((campaign, contact_id)))
    assert state is not None
    return state


def held(engine: Engine, campaign: str, reason: str) -> float:
    value = engine.recorder.registry.get_sample_value(
        "telgate_dials_held_total", {"campaign": campaign, "reason": reason}
    )
    return value or 0.0


async def test_outside_the_window_a_due_dial_waits_as_a_row_until_it_opens(
    setup: tuple[Engine, Dispatcher, Port, Clock],
) -> None:
    engine, dispatcher, port, clock = setup
    await queue(engine, "c", {"k": "+420601000001"}, window=SATURDAY)
    (done, next_at) = await turn(engine, dispatcher)
    state = await contact(engine, "c", "k")
    assert done.taken == 0 and port.started == []
    assert (state.status, state.attempt, state.retry_at) == (Status.RETRY_SCHEDULED, 0, SATURDAY_OPENS)
    assert next_at == SATURDAY_OPENS, "its row is queued for the opening: no task, no timer"
    assert held(engine, "c", "outside_window") == 1
    clock.now = SATURDAY_OPENS - timedelta(seconds=1)
    assert (await turn(engine, dispatcher))[0].taken == 0
    clock.now = SATURDAY_OPENS
    assert (await turn(engine, dispatcher))[0].taken == 1 and port.started == [("c", "k")]
    assert (await contact(engine, "c", "k")).status is Status.CALLING


async def test_a_cap_counts_the_numbers_attempts_over_every_campaign_and_in_the_same_turn(
    setup: tuple[Engine, Dispatcher, Port, Clock],
) -> None:
    engine, dispatcher, port, clock = setup
    once = Limits(max_attempts=1, per_days=30)
    await queue(engine, "a", {"k1": "+420601000001", "k2": "+420601000001"}, limits=once)
    await turn(engine, dispatcher)
    assert port.started == [("a", "k1")], "the same number twice in one turn: the second is held"
    second = await contact(engine, "a", "k2")
    assert (second.status, second.retry_at) == (Status.RETRY_SCHEDULED, MONDAY_NOON + timedelta(days=30))
    clock.now += timedelta(hours=1)
    await queue(engine, "b", {"k3": "+420601000001", "k4": "+420601000002"}, limits=once)
    await turn(engine, dispatcher)
    assert port.started == [("a", "k1"), ("b", "k4")], "another campaign's contact with the number is held"
    assert (await contact(engine, "b", "k3")).status is Status.RETRY_SCHEDULED
    assert held(engine, "a", "max_attempts") == 1 and held(engine, "b", "max_attempts") == 1
    history = await engine.store.read(lambda t: t.number_history("+420601000001", MONDAY_NOON - timedelta(days=1)))
    assert history.attempts == (MONDAY_NOON,), "the attempt was noted with the dial; the held ones were not"


async def test_a_campaign_without_window_or_limits_is_dialled_as_before(
    setup: tuple[Engine, Dispatcher, Port, Clock],
) -> None:
    engine, dispatcher, port, _ = setup
    await queue(engine, "c", {"k1": "+420601000001", "k2": "+420601000001"})
    await turn(engine, dispatcher)
    assert port.started == [("c", "k1"), ("c", "k2")]


async def test_a_predictive_campaign_places_what_its_pacer_allows_and_nothing_without_operators(
    setup: tuple[Engine, Dispatcher, Port, Clock],
) -> None:
    engine, dispatcher, port, clock = setup
    numbers = {f"k{i}": f"+42060100000{i}" for i in range(6)}
    every_day = CallingWindow(weekly={"mon": ("00:00-24:00",)})
    await queue(engine, "p", numbers, mode=Mode.PREDICTIVE, window=every_day, operators=0)
    first, _ = await turn(engine, dispatcher, pace=dispatcher.pace)
    assert first.taken == 0 and first.held_by_pacer == {"p"} and port.started == []
    assert dispatcher._repace(first, clock.now) is False, "no operators: the pacer allows nothing"
    assert dispatcher.pace == {"p": (0, 0)}
    # an operator count on the campaign: the pacer (warming up: one call per free operator) allows 2
    await engine.store.run(lambda t: t.put_campaign(CampaignState(campaign_id="p", operators=2)))
    second, _ = await turn(engine, dispatcher, pace=dispatcher.pace)
    assert second.taken == 0
    assert dispatcher._repace(second, clock.now) is True and dispatcher.pace == {"p": (2, 0)}
    third, _ = await turn(engine, dispatcher, pace=dispatcher.pace)
    assert third.taken == 2 and port.started == [("p", "k0"), ("p", "k1")]
    # the pacer heard the two calls placed (after the commit); two ringing fill two free operators
    assert dispatcher._repace(third, clock.now) is False and dispatcher.pace == {"p": (0, 2)}
    assert len(dispatcher.pacers["p"]._ringing) == 2
    # a call placed elsewhere since the pacer's figure (another instance) is taken off it
    dispatcher.pace = {"p": (3, 2)}

    def another_instance_dials(unit: Unit) -> None:
        unit.apply(("p", "k2"), Signal(Kind.DIAL_DUE, {"source": "gateway", "kind": "dial"}))

    await engine.execute(another_instance_dials)
    fourth, _ = await turn(engine, dispatcher, pace=dispatcher.pace)
    assert fourth.taken == 2, "3 allowed with 2 in flight; 3 in flight now: 2"


async def test_a_predictive_contact_the_window_holds_is_held_without_operators(
    setup: tuple[Engine, Dispatcher, Port, Clock],
) -> None:
    """The pacer's allowance holds back calls, not the domain's other answers: a dial that would wait for
    its window is decided (retry_scheduled, retry_at), not left for operators who may never come."""
    engine, dispatcher, port, _ = setup
    await queue(engine, "p", {"k": "+420601000001"}, mode=Mode.PREDICTIVE, window=SATURDAY)
    done, _ = await turn(engine, dispatcher, pace={})
    assert done.held_by_pacer == set() and port.started == []
    state = await contact(engine, "p", "k")
    assert (state.status, state.retry_at) == (Status.RETRY_SCHEDULED, SATURDAY_OPENS)


def draft(old: Status | None, new: Status) -> EventDraft:
    return EventDraft(1, new, old, False, 1, None, {})


def test_committed_status_changes_are_the_pacers_observations() -> None:
    state = ContactState(campaign_id="p", contact_id="k", channel=Channel.VOICE, mode=Mode.PREDICTIVE)
    at = MONDAY_NOON
    S = Status
    cases: list[tuple[Status | None, Status, list[type]]] = [
        (S.INITIAL, S.CALLING, [pacing.Placed]),
        (S.CALLING, S.AWAITING_OPERATOR, [pacing.Answered]),
        (S.CALLING, S.CALL_IN_PROGRESS, [pacing.Answered, pacing.Connected]),
        (S.CALLING, S.RETRY_SCHEDULED, [pacing.NotAnswered]),
        (S.AWAITING_OPERATOR, S.CALL_IN_PROGRESS, [pacing.Connected]),
        (S.AWAITING_OPERATOR, S.ABANDONED, [pacing.Abandoned]),
        (S.AWAITING_OPERATOR, S.CANCELED_BY_CLIENT, [pacing.Left]),
        (S.CALL_IN_PROGRESS, S.ACW, [pacing.CallEnded]),
        (S.CALL_IN_PROGRESS, S.SUCCESS, [pacing.CallEnded, pacing.Freed]),
        (S.ACW, S.SUCCESS, [pacing.Freed]),
        (S.INITIAL, S.RETRY_SCHEDULED, []),
    ]
    for old, new, kinds in cases:
        seen = observations(state, draft(old, new), at)
        assert [type(o) for o in seen] == kinds, (old, new)
        assert all(o.call == "k#1" and o.at == at for o in seen)


async def test_a_retry_a_restart_and_a_resume_outside_the_window_are_held_too(
    setup: tuple[Engine, Dispatcher, Port, Clock],
) -> None:
    """Every path to a dial is the turn's DIAL_DUE (the only voice Attempt of the tables): a retry due after
    the window closed, a call the restart rule settled, a campaign resumed at night — each waits for the
    next opening."""
    engine, dispatcher, port, clock = setup
    monday = CallingWindow(weekly={"mon": ("13:00-14:00",)}, margin_s=0)  # Prague: 12:00-13:00 UTC
    next_monday = MONDAY_NOON + timedelta(days=7)
    await queue(engine, "c", {"busy": "+420601000001", "cut": "+420601000002"}, window=monday)
    await turn(engine, dispatcher)
    assert port.started == [("c", "busy"), ("c", "cut")]

    def busy_and_restart(unit: Unit) -> None:
        rejected = Signal(Kind.REJECTED, {"source": "sip", "kind": "rejected", "sip_code": 486}, attempt=1)
        unit.apply(("c", "busy"), rejected)
        unit.restart_rule("gw")  # the instance died with the other call up

    clock.now = MONDAY_NOON + timedelta(minutes=30)
    await engine.execute(busy_and_restart)
    assert {(await contact(engine, "c", k)).status for k in ("busy", "cut")} == {Status.RETRY_SCHEDULED}
    clock.now = MONDAY_NOON + timedelta(hours=2)  # both retries are due; the window closed at 13:00 UTC
    await turn(engine, dispatcher)
    for k in ("busy", "cut"):
        state = await contact(engine, "c", k)
        assert (state.status, state.attempt, state.retry_at) == (Status.RETRY_SCHEDULED, 1, next_monday), k
    # a campaign paused and resumed at night: its new contact waits too
    await engine.execute(lambda unit: unit.campaign_action("c", Action.PAUSE))
    await queue_more(engine, "c", {"new": "+420601000003"})
    await engine.execute(lambda unit: unit.campaign_action("c", Action.RESUME))
    await turn(engine, dispatcher)
    assert (await contact(engine, "c", "new")).retry_at == next_monday
    assert port.started == [("c", "busy"), ("c", "cut")], "nothing more on the wire"
    clock.now = next_monday
    await turn(engine, dispatcher)
    assert sorted(port.started[2:]) == [("c", "busy"), ("c", "cut"), ("c", "new")]


async def queue_more(engine: Engine, campaign: str, contacts: dict[str, str]) -> None:
    def create(unit: Unit) -> None:
        for contact_id, phone in contacts.items():
            state = ContactState(campaign_id=campaign, contact_id=contact_id, channel=Channel.VOICE)
            unit.apply((campaign, contact_id), Signal(Kind.CREATE, phone=phone), create=state)

    await engine.execute(create)


async def test_a_predictive_campaign_that_never_declared_operators_is_paced_as_before(
    setup: tuple[Engine, Dispatcher, Port, Clock],
) -> None:
    """No `operators` and nobody `available`: the PBX's queue takes its calls; max_cps/max_concurrent pace
    it, as before the pacer (an upgrade does not stop a running campaign)."""
    engine, dispatcher, port, _ = setup
    await queue(engine, "q", {"k0": "+420601000010", "k1": "+420601000011"}, mode=Mode.PREDICTIVE)
    done, _ = await turn(engine, dispatcher, pace=dispatcher.pace)
    assert done.taken == 2 and done.held_by_pacer == set()
    assert port.started == [("q", "k0"), ("q", "k1")]
