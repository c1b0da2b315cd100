"""Connections to the server and what their failures mean: connecting, LISTEN for what the other instances
NOTIFY, a lost connection (`Lost`) and the commit mark that settles a COMMIT whose answer was cut off,
the wait between tries (`Backoff`), and the server's race verdicts (deadlock, serialization failure)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg

from gateway.store import StoreError

log = logging.getLogger("telgate.store")
NOTIFY_CHANNEL = "telgate"
# written last, and only by a transaction that wrote something (one that only read needs no verdict);
# an INSERT of no row assigns no transaction id, so a read-only transaction stays read-only
MARK = (
    "INSERT INTO commit_marks (owner, token, at) SELECT %s, %s, now() WHERE pg_current_xact_id_if_assigned()"
    " IS NOT NULL ON CONFLICT (owner) DO UPDATE SET token = excluded.token, at = excluded.at"
)
VERDICT = "SELECT token FROM commit_marks WHERE owner = %s FOR SHARE"


class Lost(Exception):
    """The connection broke. Nothing of the transaction is committed, unless `token` is set: then COMMIT
    was under way, and whether `commit_marks` holds `token` says whether `result` stands."""

    def __init__(self, detail: str, token: int | None = None, result: Any = None) -> None:
        super().__init__(detail)
        self.token = token
        self.result = result


def connect(url: str, connect_timeout_s: int, read_only: bool = False) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, connect_timeout=connect_timeout_s, application_name="telgate")
    conn.execute("SET TIME ZONE 'UTC'")
    if read_only:  # one snapshot per read transaction, and no write through it
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET default_transaction_isolation = 'repeatable read'")
    conn.commit()
    return conn


async def listen(
    url: str, connect_timeout_s: int, closed: Callable[[], bool], own_pid: Callable[[], int]
) -> AsyncIterator[bytes]:
    """LISTEN on a connection of its own (autocommit, in the event loop), reconnected with backoff;
    a notification sent while it was away is lost, so what notifies must also be safe to miss
    (docs/cluster.md: a cancel that misses its call is caught by the call's owner at its next look)."""
    delay = 0.05
    while not closed():
        try:
            conn = await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=connect_timeout_s, application_name="telgate-listen"
            )
            async with conn:
                await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                delay = 0.05
                async for note in conn.notifies():
                    if note.pid == own_pid():
                        # this instance's own commit: its engine woke its publisher and dispatcher
                        # already; taken again, each cost a fetch or a dispatch turn for nothing
                        continue
                    yield note.payload.encode()
        except psycopg.OperationalError as exc:
            log.warning("store notifications lost, listening again", extra={"detail": str(exc)})
        await asyncio.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 2.0)


def find_race(exc: BaseException) -> psycopg.Error | None:
    """A deadlock (several instances locking the same rows in another order) or a serialization failure
    anywhere in the chain of `exc` (the engine wraps what a piece of work raised)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class Backoff:
    """The wait between tries while the server is away: jittered, 50 ms doubling to 2 s; StoreError once
    it has been away for `outage_s`."""

    def __init__(self, outage_s: float) -> None:
        self.outage_s = outage_s
        self.down_since: float | None = None
        self.delay = 0.05

    async def wait(self, lost: Lost) -> None:
        now = time.monotonic()
        self.down_since = now if self.down_since is None else self.down_since
        if now - self.down_since >= self.outage_s:
            raise StoreError(f"PostgreSQL unreachable for {self.outage_s:.0f} s: {lost}") from lost
        await asyncio.sleep(self.delay * (0.5 + random.random()))
        self.delay = min(self.delay * 2, 2.0)
