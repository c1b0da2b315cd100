"""The dispatcher's turn over a real SQLite file: campaign limits hold within one turn, and the buckets
are spent once, after the commit, however often the engine runs the turn's transaction."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from gateway.domain import effects as fx
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CampaignState, ContactState
from gateway.domain.statuses import Channel, Status
from gateway.engine.dispatcher import Dispatcher, Turn
from gateway.engine.engine import Engine, Unit
from gateway.store import Conflict


class Port:
    """A channel that records what it was asked to start (its wire) and keeps nothing in flight."""

    channel = Channel.VOICE
    max_concurrent = 1000
    max_rate = 1000.0

    def __init__(self) -> None:
        self.started: list[tuple[str, int]] = []

    def active(self, campaign_id: str | None = None) -> int:
        assert campaign_id is None, "the turn runs on the store thread: it reads the counts it was given"
        return 0

    def active_counts(self) -> dict[str, int]:
        return {}

    def submit(self, effect: fx.Effect, contact: ContactState) -> None:
        assert isinstance(effect, fx.Dial)
        self.started.append((contact.contact_id, effect.attempt))

    async def run(self) -> None:
        await asyncio.Event().wait()


@pytest.fixture
async def engine(engine: Engine) -> Engine:
    """The shared engine (tests/unit/conftest.py) with a voice port that records what it starts."""
    engine.ports[Channel.VOICE] = Port()
    return engine


async def queue(engine: Engine, n: int, **campaign: Any) -> None:
    await engine.store.run(lambda txn: txn.put_campaign(CampaignState(campaign_id="c", **campaign)))

    def setup(unit: Unit) -> None:
        for i in range(n):
            state = ContactState(campaign_id="c", contact_id=f"k{i:02d}", channel=Channel.VOICE)
            unit.apply(("c", f"k{i:02d}"), Signal(Kind.CREATE, phone=f"+42060123{i:04d}"), create=state)

    await engine.execute(setup)


async def calling(engine: Engine) -> list[str]:
    def read(unit: Unit) -> list[str]:
        return [
            k
            for k in (f"k{i:02d}" for i in range(10))
            if (c := unit.read.get_contact(("c", k))) is not None and c.status is Status.CALLING
        ]

    return await engine.execute(read)


async def test_a_turn_starts_no_more_than_the_campaigns_max_concurrent(engine: Engine) -> None:
    """The calls a turn starts are on the wire only after its commit, so the port's count cannot be the
    only limit inside the turn: 64 of a campaign's contacts would start at once past max_concurrent 3."""
    await queue(engine, 10, max_concurrent=3)
    dispatcher = Dispatcher(engine, engine.ports[Channel.VOICE])
    turn, _ = await engine.execute(functools.partial(dispatcher._turn, room=64, on_wire={}))
    port = engine.ports[Channel.VOICE]
    assert isinstance(port, Port)
    assert turn.started == {"c": 3} and len(port.started) == 3
    assert await calling(engine) == ["k00", "k01", "k02"], "the first three in queue order, the rest still queued"


async def test_a_turn_counts_the_campaigns_calls_from_the_snapshot_it_is_given(engine: Engine) -> None:
    """The turn runs on the store thread: the channel's calls per campaign are read in the event loop
    before it (ChannelPort.active_counts) and passed in; the port is not read inside the turn."""
    await queue(engine, 10, max_concurrent=3)
    dispatcher = Dispatcher(engine, engine.ports[Channel.VOICE])
    turn, _ = await engine.execute(functools.partial(dispatcher._turn, room=64, on_wire={"c": 2, "other": 5}))
    assert turn.started == {"c": 1}, "max_concurrent 3 less the 2 this instance has on the wire"
    assert await calling(engine) == ["k00"]


async def test_buckets_are_spent_once_after_the_commit_even_when_the_turn_runs_again(engine: Engine) -> None:
    """A transaction the engine runs again (a Conflict here; a lost PostgreSQL connection likewise) used to
    take the tokens once per run: the channel's rate fell short by the re-runs, the campaign's max_cps
    bucket emptied for contacts never started. Now the turn counts, and `spend` takes them after the
    commit."""
    await queue(engine, 10, max_cps=4.0)
    dispatcher = Dispatcher(engine, engine.ports[Channel.VOICE])
    runs: list[Turn] = []

    def turn_then_conflict_once(unit: Unit) -> tuple[Turn, Any]:
        result = dispatcher._turn(unit, room=8, on_wire={})
        runs.append(result[0])
        if len(runs) == 1:
            raise Conflict("another instance moved a contact")
        return result

    channel_before = dispatcher.bucket.tokens
    turn, _ = await engine.execute(turn_then_conflict_once)
    assert len(runs) == 2, "the engine ran the turn again after the conflict"
    assert turn.started == {"c": 4}, "max_cps 4 (burst 4) allows 4 in one turn"
    bucket = dispatcher.campaign_buckets["c"]
    assert bucket.whole(turn.at) == 4 and dispatcher.bucket.tokens == channel_before, "nothing spent inside"
    dispatcher.spend(turn)
    assert bucket.whole(turn.at) == 0
    assert dispatcher.bucket.tokens == pytest.approx(channel_before - 4)
    port = engine.ports[Channel.VOICE]
    assert isinstance(port, Port)
    assert sorted(port.started) == [(f"k{i:02d}", 1) for i in range(4)], "the wire: the committed run's four"
