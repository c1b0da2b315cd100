"""One policy for a store failure in a background loop (gateway/engine/loops.py), and a poison timer contained."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.effects import TimerKind
from gateway.engine import commands
from gateway.engine.dispatcher import Scheduler
from gateway.engine.engine import Engine, Unit
from gateway.engine.loops import StoreBackoff
from gateway.store import Timer


def test_the_backoff_doubles_to_its_ceiling_and_a_success_ends_the_streak(caplog: pytest.LogCaptureFixture) -> None:
    backoff = StoreBackoff("t", first_s=0.5, max_s=4.0)
    assert [backoff.failed(OSError("x")) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # once per streak
    backoff.ok()
    assert backoff.failures == 0 and backoff.failed(OSError("y")) == 0.5


async def test_a_timer_whose_signal_raises_is_dropped_and_the_scheduler_goes_on(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(unit: Unit, timer: Timer) -> None:
        raise RuntimeError("a bug in a timer's signal")

    monkeypatch.setattr(commands, "apply_timer", explode)
    past = datetime.now(UTC) - timedelta(seconds=1)
    await engine.execute(lambda unit: unit._txn.add_timer(TimerKind.CAMPAIGN_START, "c", None, past))
    scheduler = Scheduler(engine)
    task = asyncio.create_task(scheduler.run())
    try:
        for _ in range(200):
            if await engine.store.read(lambda txn: txn.next_timer_at()) is None:
                break
            await asyncio.sleep(0.01)
        assert await engine.store.read(lambda txn: txn.next_timer_at()) is None  # fired without its signal
        assert not task.done()  # and the scheduler runs on
    finally:
        task.cancel()
