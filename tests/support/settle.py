"""A positive barrier for "nothing more arrives", in place of a sleep that hopes it is long enough.

A test that must show an event did NOT happen waits until everything that could have caused it has
happened and been seen: the peer has nothing outstanding (the stand-in's every webhook answered — the
gateway answers after its commit), the gateway's outbox holds nothing unpublished, and the backend has
taken every message the gateway's publisher saw acknowledged. An event that would come later was never
committed: its absence is proved, not guessed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.service.app import App
from tests.support.harness import Backend


def taken(b: Backend) -> int:
    """The gateway's messages the backend has taken (repeats counted, as the publisher counts them)."""
    return len(b.events) + len(b.results) + len(b.campaigns) + len(b.inbound) + len(b.notices)


async def settled(b: Backend, app: App, idle: Callable[[], bool] = lambda: True, timeout_s: float = 10.0) -> None:
    """Return once `idle()` holds, then the outbox is empty, then the backend holds as many messages as
    the gateway published (in that order: each step counts what the one before let through)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if idle():
                pending, _ = await app.store.read(lambda t: t.outbox_stats())
                if pending == 0 and taken(b) >= app.recorder.events_published._value.get():
                    return
            await asyncio.sleep(0.02)
