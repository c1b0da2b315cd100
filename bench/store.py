"""PostgreSQL driver benchmark: psycopg 3 and asyncpg on the store's workload, side by side in one run.

One transaction per batch of contacts, as the engine's group commit does for an intake: per contact the
read the Txn protocol makes (`get_contact`, a round trip: the engine needs its answer), the INSERT of the
contact and the INSERT of its event; then the publisher's outbox fetch and delete. Each driver runs it
one statement per round trip ("row"), with the writes sent as one executemany per statement ("set"),
psycopg also with every write riding along with the next read in pipeline mode ("pipeline"), asyncpg
also as the synchronous Txn protocol would have to use it, statement by statement through an event loop
owned by the store thread ("bridged"). Then the stores themselves (gateway/store) on the same intake.
A private PostgreSQL is started (tests/support/postgres.py).

    python -m bench.store [--contacts 500] [--batches 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg

from tests.support.postgres import running_postgres

SCHEMA = """
CREATE TABLE contacts (campaign_id text, contact_id text, sequence integer NOT NULL, state text NOT NULL,
                       PRIMARY KEY (campaign_id, contact_id));
CREATE TABLE messages (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, topic text NOT NULL,
                       payload bytea NOT NULL, pending boolean NOT NULL, campaign_id text, contact_id text);
CREATE INDEX messages_pending ON messages (id) WHERE pending;
"""
GET = "SELECT state FROM contacts WHERE campaign_id = $1 AND contact_id = $2"
PUT = "INSERT INTO contacts VALUES ($1, $2, 1, $3) ON CONFLICT DO NOTHING"
EVENT = "INSERT INTO messages (topic, payload, pending, campaign_id, contact_id) VALUES ($1, $2, true, $3, $4)"
FETCH = "SELECT id, topic, payload FROM messages WHERE pending AND id > $1 ORDER BY id LIMIT $2"
DELETE = "UPDATE messages SET pending = false WHERE id = ANY($1)"
STATE = json.dumps({"channel": "voice", "phone": "+420601123456", "policy": {"max_attempts": 3}, "meta": {}})
EVENT_BODY = json.dumps({"status": "initial", "label": "Initial", "x": "y" * 400}).encode()


def rows(batch: int, n: int) -> list[tuple[str, str]]:
    return [(f"c{batch}", f"k{i}") for i in range(n)]


def psycopg_sql(sql: str) -> str:
    for i in range(4, 0, -1):
        sql = sql.replace(f"${i}", "%s")
    return sql


def psycopg_batch(conn: psycopg.Connection[Any], keys: list[tuple[str, str]], mode: str) -> None:
    get, put, event = psycopg_sql(GET), psycopg_sql(PUT), psycopg_sql(EVENT)
    with conn.transaction():
        cur = conn.cursor()
        if mode == "pipeline":
            with conn.pipeline():
                for key in keys:
                    cur.execute(get, key)
                    cur.fetchone()  # the engine waits for this answer; the queued writes ride along
                    conn.execute(put, (*key, STATE))
                    conn.execute(event, ("t/" + key[1], EVENT_BODY, *key))
        else:
            for key in keys:
                cur.execute(get, key).fetchone()
                if mode == "row":
                    cur.execute(put, (*key, STATE))
                    cur.execute(event, ("t/" + key[1], EVENT_BODY, *key))
            if mode == "set":
                cur.executemany(put, [(*k, STATE) for k in keys])
                cur.executemany(event, [("t/" + k[1], EVENT_BODY, *k) for k in keys])
        ids = [r[0] for r in cur.execute(psycopg_sql(FETCH), (0, len(keys))).fetchall()]
        cur.execute(psycopg_sql(DELETE), (ids,))


async def asyncpg_batch(conn: asyncpg.Connection, keys: list[tuple[str, str]], mode: str) -> None:
    async with conn.transaction():
        for key in keys:
            await conn.fetchrow(GET, *key)
            if mode == "row":
                await conn.execute(PUT, *key, STATE)
                await conn.execute(EVENT, "t/" + key[1], EVENT_BODY, *key)
        if mode != "row":
            await conn.executemany(PUT, [(*k, STATE) for k in keys])
            await conn.executemany(EVENT, [("t/" + k[1], EVENT_BODY, *k) for k in keys])
        ids = [r[0] for r in await conn.fetch(FETCH, 0, len(keys))]
        await conn.execute(DELETE, ids)


class Bridged:
    """asyncpg behind the synchronous Txn protocol at its cheapest: the store thread owns an event loop
    and the connection, and runs each statement to completion on it (writes as in `set`)."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(url))
        self.loop.run_until_complete(self.conn.execute(SCHEMA))

    def batch(self, keys: list[tuple[str, str]]) -> None:
        conn, call = self.conn, self.loop.run_until_complete
        tx = conn.transaction()
        call(tx.start())
        for key in keys:
            call(conn.fetchrow(GET, *key))
        call(conn.executemany(PUT, [(*k, STATE) for k in keys]))
        call(conn.executemany(EVENT, [("t/" + k[1], EVENT_BODY, *k) for k in keys]))
        ids = [r[0] for r in call(conn.fetch(FETCH, 0, len(keys)))]
        call(conn.execute(DELETE, ids))
        call(tx.commit())

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


async def stores(url: str, n: int, batches: int) -> float:
    """The store itself, as the engine drives it for an intake: contacts/s through `Store.run`."""
    from gateway.domain.state import ContactState
    from gateway.domain.statuses import Channel
    from gateway.store import Txn, open_store

    def intake(t: Txn, b: int) -> None:
        for key in rows(b, n):
            state = ContactState(campaign_id=key[0], contact_id=key[1], channel=Channel.VOICE, sequence=1)
            t.get_contact(key)
            t.put_contact(state, 0, None)
            t.add_event(key, "t/" + key[1], EVENT_BODY)
        t.outbox_delete([r.id for r in t.outbox_fetch(0, n)])

    store = open_store(url)
    await store.open()
    times = []
    for b in range(-1, batches):
        started = time.perf_counter()
        await store.run(lambda t, b=b: intake(t, b))
        times.append(time.perf_counter() - started)
    await store.close()
    return n / statistics.median(times[1:])


async def main(n: int, batches: int, durable: bool) -> None:
    """The modes take turns batch by batch, so that a neighbour's load on this shared machine falls on
    all of them alike; the figures are medians."""
    options = () if durable else ("-c synchronous_commit=off",)
    with running_postgres(options) as pg:
        runners: dict[str, Callable[[int], Awaitable[None]]] = {}
        psy: list[psycopg.Connection[Any]] = []
        apg: list[asyncpg.Connection] = []
        for mode in ("row", "set", "pipeline"):
            psy.append(psycopg.connect(pg.create_database(f"psycopg_{mode}"), autocommit=True))
            psy[-1].execute(SCHEMA)  # type: ignore[arg-type]

            async def run_psycopg(b: int, c: psycopg.Connection[Any] = psy[-1], m: str = mode) -> None:
                psycopg_batch(c, rows(b, n), m)

            runners[f"psycopg {mode}"] = run_psycopg
        for mode in ("row", "set"):
            apg.append(await asyncpg.connect(pg.create_database(f"asyncpg_{mode}")))
            await apg[-1].execute(SCHEMA)
            runners[f"asyncpg {mode}"] = lambda b, c=apg[-1], m=mode: asyncpg_batch(c, rows(b, n), m)
        bridge = await asyncio.to_thread(Bridged, pg.create_database("asyncpg_bridged"))
        runners["asyncpg bridged"] = lambda b: asyncio.to_thread(bridge.batch, rows(b, n))
        times: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        for b in range(-1, batches):  # batch -1 warms up: plans, caches
            for name, run in runners.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                await run(b)
                if b >= 0:
                    times[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - cpu_started)
        for c in psy:
            c.close()
        for a in apg:
            await a.close()
        await asyncio.to_thread(bridge.close)
        store_rates = {"PostgresStore": await stores(pg.create_database("store"), n, batches)}
    with tempfile.TemporaryDirectory() as tmp:
        store_rates["SqliteStore"] = await stores(f"sqlite:///{tmp}/bench.db", n, batches)
    print(f"PostgreSQL {'durable' if durable else 'synchronous_commit=off'}, {batches} batches of {n} contacts")
    print(f"{'driver / mode':<20} {'contacts/s':>11} {'client CPU µs/contact':>22}")
    for name in runners:
        rate, us = n / statistics.median(times[name]), statistics.median(cpu[name]) * 1e6 / n
        print(f"{name:<20} {rate:>11,.0f} {us:>22.1f}")
    for name, rate in store_rates.items():
        print(f"{name:<20} {rate:>11,.0f}   (the store as the engine drives it)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--contacts", type=int, default=500, help="contacts per transaction")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--durable", action="store_true", help="fsync'd commits (default: synchronous_commit=off)")
    args = parser.parse_args()
    asyncio.run(main(args.contacts, args.batches, args.durable))
