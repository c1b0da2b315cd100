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


async def bus_caught_up(app: App, timeout_s: float = 10.0) -> int:
    """Return once every command the broker had routed to `app`'s session is committed, acknowledged and
    its result published; returns how many messages its connection has taken. The barrier is a round trip
    on the app's own connection (a SUBSCRIBE and UNSUBSCRIBE of a topic no command is sent to, as
    `leave_group` does): the broker writes what it holds for a client, and what a PUBACK released, before
    it answers that client's next packet. Two rounds that bring nothing new: nothing more was routed."""
    fence = "telgate/v1/cmd/fence/test-caught-up"
    async with asyncio.timeout(timeout_s):
        quiet = 0
        while quiet < 2:
            await app.bus.connected.wait()
            client, intake = app.bus._client, app.bus._intake
            if client is None or intake is None or intake.client is not client:
                await asyncio.sleep(0.01)  # the receiver of a new connection is starting
                continue
            while not intake.settled():  # its PUBACKs go out after the commits
                await asyncio.sleep(0.005)
            seen = intake.arrived
            await client.subscribe(fence, qos=1, timeout=10)
            await client.unsubscribe(fence, timeout=10)
            quiet = quiet + 1 if intake.arrived == seen and intake.settled() else 0
        while (await app.store.read(lambda t: t.outbox_stats()))[0]:
            await asyncio.sleep(0.02)
        return intake.arrived
