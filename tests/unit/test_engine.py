"""The engine over a real SQLite file: group commit, per-contact order, one failing work fails alone."""

from __future__ import annotations

import asyncio

from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState
from gateway.domain.statuses import Channel, Status
from gateway.engine.engine import Engine, Unit


def create(unit: Unit, contact: str) -> object:
    state = ContactState(campaign_id="c", contact_id=contact, channel=Channel.VOICE)
    unit.campaign("c")
    return unit.apply(("c", contact), Signal(Kind.CREATE, phone="+420601234567"), create=state)


async def test_failing_work_is_undone_alone_and_others_commit(engine: Engine) -> None:
    def boom(unit: Unit) -> None:
        create(unit, "half")  # writes, then fails: must leave nothing behind
        raise RuntimeError("bug")

    futures = [engine.submit(lambda u: create(u, "a")), engine.submit(boom), engine.submit(lambda u: create(u, "b"))]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[1], RuntimeError)
    states = await engine.store.run(lambda t: [t.get_contact(("c", k)) for k in ("a", "half", "b")])
    assert states[0] is not None and states[2] is not None and states[1] is None
    pending, _ = await engine.store.run(lambda t: t.outbox_stats())
    assert pending == 2 + 1  # initial of a and b, and the campaign's first event


async def test_signals_for_one_contact_apply_in_submission_order(engine: Engine) -> None:
    await engine.execute(lambda u: create(u, "k"))
    kinds = [Kind.DIAL_DUE, Kind.ANSWERED, Kind.HANGUP]
    decisions = await asyncio.gather(*(engine.signal(("c", "k"), Signal(k, attempt=1)) for k in kinds))
    assert [d.state.status for d in decisions] == [Status.CALLING, Status.CALL_IN_PROGRESS, Status.SUCCESS]
    assert [d.state.sequence for d in decisions] == [2, 3, 4]
    history = await engine.store.run(lambda t: t.events(("c", "k")))
    assert len(history) == 4


async def test_auto_pause_hook_pauses_campaigns_of_that_channel(engine: Engine) -> None:
    await engine.execute(lambda u: create(u, "k"))  # a voice contact in campaign "c"
    paused = await engine.auto_pause(Channel.VOICE, "pbx_down")
    assert paused == ["c"]
    camp = await engine.store.run(lambda t: t.get_campaign("c"))
    assert camp is not None and camp.status == "paused" and camp.reason == "pbx_down" and camp.paused_by_gateway
    assert await engine.auto_pause(Channel.WHATSAPP, "account") == []
