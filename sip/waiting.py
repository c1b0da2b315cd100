"""Waiting for an event with a deadline without losing a cancellation.

`asyncio.wait_for(event.wait(), t)` in Python 3.11 can swallow a cancellation that arrives while the
event is being set (the awaited task completes and the CancelledError is dropped); a task looping on it
then never ends and a TaskGroup waiting for it hangs. `asyncio.timeout()` counts cancellations and
does not have that race.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:  # noqa: ASYNC109
    """True when `event` was set, False when `timeout` seconds passed first."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False
