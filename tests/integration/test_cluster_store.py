"""What several instances ask of the PostgreSQL store (SPEC §11, docs/cluster.md), on a real server:
leases and the fair share of outbox partitions, burying a member whose lease expired, claiming ready
contacts, a campaign created by two instances at once, notifications sent only by a commit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from gateway.domain.state import CampaignState, ContactState
from gateway.domain.statuses import Channel
from gateway.store import PARTS, Conflict, Txn, contact_partition
from gateway.store.postgres import PostgresStore
from tests.support.postgres import Postgres

pytestmark = pytest.mark.integration
_names = itertools.count()
LEASE_S = 1.0


@pytest.fixture
async def two(session_postgres: Postgres) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two instances' stores on one database."""
    url = await asyncio.to_thread(session_postgres.create_database, f"cluster{next(_names)}")
    a, b = PostgresStore(url), PostgresStore(url)
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def test_leases_share_the_partitions_fairly_and_a_dead_member_is_buried_once(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    assert await a.run(lambda t: t.lease_join("a", 1, LEASE_S)) is None
    alone = await a.run(lambda t: t.lease_renew("a", 1, LEASE_S, ()))
    assert alone.held and alone.members == ("a",) and alone.parts == frozenset(range(PARTS))
    # another run of the id "a" while the lease lives: refused with the holder's epoch, nothing written
    assert await b.run(lambda t: t.lease_join("a", 2, LEASE_S)) == 1
    assert await b.run(lambda t: t.lease_join("b", 7, LEASE_S, "telgate-b")) is None
    first = await b.run(lambda t: t.lease_renew("b", 7, LEASE_S, ()))
    assert first.members == ("a", "b") and first.parts == frozenset(), "every partition is still a's"
    half = frozenset(range(PARTS // 2, PARTS))
    given = await a.run(lambda t: t.lease_renew("a", 1, LEASE_S, half))
    assert given.parts == frozenset(range(PARTS // 2))
    taken = await b.run(lambda t: t.lease_renew("b", 7, LEASE_S, ()))
    assert taken.parts == half, "b takes what a gave back, up to its fair share"
    assert not (await b.run(lambda t: t.lease_renew("b", 8, LEASE_S, ()))).held, "another epoch holds nothing"

    # kept: b stops renewing and its lease expires by PostgreSQL's clock (`expires_at <= now()`), which no
    # test can move; the lease core's own rules are driven by a fake clock in tests/unit/test_lease.py
    await asyncio.sleep(LEASE_S + 0.2)
    seen = await a.run(lambda t: t.lease_renew("a", 1, LEASE_S, ()))
    assert seen.dead == ("b",) and seen.members == ("a",)
    assert await a.run(lambda t: t.lease_bury("b")) == "telgate-b", "the buried member's MQTT session is named"
    assert await b.run(lambda t: t.lease_bury("b")) is None, "buried once"
    assert not (await b.run(lambda t: t.lease_renew("b", 7, LEASE_S, ()))).held, "b was buried: it must stop"
    back = await a.run(lambda t: t.lease_renew("a", 1, LEASE_S, ()))
    assert back.parts == frozenset(range(PARTS)), "b's expired partitions are a's again"
    await a.run(lambda t: t.lease_leave("a", 1))
    assert await b.run(lambda t: t.lease_join("a", 2, LEASE_S)) is None, "after leaving the id is free at once"


def _contact(cid: str, ready: datetime) -> ContactState:
    return ContactState(campaign_id="c", contact_id=cid, channel=Channel.VOICE, sequence=1)


async def test_a_ready_contact_another_instances_turn_holds_is_skipped_not_waited_for(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    now = datetime.now(UTC)

    def setup(t: Txn) -> None:
        t.put_campaign(CampaignState(campaign_id="c"), created=True)
        for i in range(6):
            t.put_contact(_contact(f"k{i}", now), 0, None, (now - timedelta(seconds=10 - i), 1))

    await a.run(setup)
    holding, release = threading.Event(), threading.Event()
    claimed: list[list[tuple[str, str]]] = []

    def turn(t: Txn) -> None:
        claimed.append(t.ready_contacts(Channel.VOICE, now, 3, frozenset()))
        holding.set()
        release.wait(10)

    first = asyncio.create_task(a.run(turn))
    await asyncio.to_thread(holding.wait, 10)
    started = time.monotonic()
    other = await b.run(lambda t: t.ready_contacts(Channel.VOICE, now, 3, frozenset()))
    assert time.monotonic() - started < 2, "the second turn waited for the first"
    release.set()
    await first
    assert claimed[0] == [("c", "k0"), ("c", "k1"), ("c", "k2")]
    assert other == [("c", "k3"), ("c", "k4"), ("c", "k5")], "the contacts the first turn holds are skipped"
    # a read-only look (no claim) sees the queue as it is
    assert len(await b.read(lambda t: t.ready_contacts(Channel.VOICE, now, 10, frozenset()))) == 6


async def test_one_dispatch_turn_at_a_time_counts_the_clusters_calls_as_committed_and_as_written(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    """The dispatch lock is a try-lock: a second instance's turn is told at once that it cannot run. The
    calls in flight counted with the lock (one round trip) are the cluster's as committed, plus what the
    turn's own transaction wrote before it; a write after the lock is counted when asked again."""
    a, b = two
    now = datetime.now(UTC)

    def setup(t: Txn) -> None:
        t.put_campaign(CampaignState(campaign_id="c"), created=True)
        t.put_campaign(CampaignState(campaign_id="d"), created=True)
        for i in range(3):
            t.put_contact(_contact(f"k{i}", now).model_copy(update={"in_flight": True}), 0, "gw-b")
        t.put_contact(_contact("idle", now), 0, None)

    await b.run(setup)
    holding, release = threading.Event(), threading.Event()
    seen: list[Any] = []

    def turn(t: Txn) -> None:
        idle = t.get_contact(("c", "idle"))
        assert idle is not None
        moved = idle.model_copy(update={"in_flight": True, "sequence": idle.sequence + 1})
        assert t.put_contact(moved, idle.sequence, "gw-a")  # queued: counted with the lock
        seen.append((t.lock_dispatch(Channel.VOICE), t.in_flight_counts(Channel.VOICE)))
        other = ContactState(campaign_id="d", contact_id="x", channel=Channel.VOICE, sequence=1, in_flight=True)
        assert t.put_contact(other, 0, "gw-a")
        seen.append(t.in_flight_counts(Channel.VOICE))
        holding.set()
        release.wait(10)

    first = asyncio.create_task(a.run(turn))
    await asyncio.to_thread(holding.wait, 10)
    started = time.monotonic()
    assert not await b.run(lambda t: t.lock_dispatch(Channel.VOICE)), "another instance's turn holds the lock"
    assert time.monotonic() - started < 2, "the try-lock waited"
    assert await b.run(lambda t: t.in_flight_counts(Channel.VOICE)) == {"c": 3}, "only what is committed"
    release.set()
    await first
    assert seen == [(True, {"c": 4}), {"c": 4, "d": 1}]
    assert await b.run(lambda t: (t.lock_dispatch(Channel.VOICE), t.in_flight_counts(Channel.WHATSAPP))) == (True, {})


async def test_a_campaign_two_instances_create_at_once_is_created_once(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    reading, release = threading.Event(), threading.Event()

    def create(t: Txn) -> None:
        assert t.get_campaign("c") is None
        reading.set()
        release.wait(10)
        t.put_campaign(CampaignState(campaign_id="c"), created=True)

    slow = asyncio.create_task(a.run(create))
    await asyncio.to_thread(reading.wait, 10)
    await b.run(lambda t: t.put_campaign(CampaignState(campaign_id="c", max_cps=3), created=True))
    release.set()
    with pytest.raises(Conflict):
        await slow
    got = await a.read(lambda t: t.get_campaign("c"))
    assert got is not None and got.max_cps == 3, "the first creation stands, the second decides again"


def _lock_waited_for(url: str, timeout_s: float = 10.0) -> None:
    """Return once a session of this database waits for a lock (pg_stat_activity), not after a guess."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            time.sleep(0.01)
    raise AssertionError("no session waited for a lock")


async def test_a_campaign_decision_waits_for_the_other_instances_and_reads_what_it_committed(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    await a.run(lambda t: t.put_campaign(CampaignState(campaign_id="c"), created=True))
    holding, release = threading.Event(), threading.Event()

    def pause(t: Txn) -> None:
        camp = t.lock_campaign("c")
        assert camp is not None
        holding.set()
        release.wait(10)
        t.put_campaign(camp.model_copy(update={"max_cps": 1}))

    first = asyncio.create_task(a.run(pause))
    await asyncio.to_thread(holding.wait, 10)
    second = asyncio.create_task(b.run(lambda t: t.lock_campaign("c")))
    await asyncio.to_thread(_lock_waited_for, b.url)  # the server itself says the second one waits
    assert not second.done(), "the lock waits for the first decision"
    release.set()
    await first
    seen = await second
    assert seen is not None and seen.max_cps == 1, "and then reads it"


async def test_notifications_reach_the_other_instances_when_and_only_when_their_transaction_commits(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    got: list[bytes] = []
    listening, marker = asyncio.Event(), asyncio.Event()

    async def listen() -> None:
        async for note in b.notifications():
            if note.startswith(b'{"probe"'):
                listening.set()
            else:
                got.append(note)
                if note == b'{"n": 3}':
                    marker.set()

    listener = asyncio.create_task(listen())
    # LISTEN is in place once a probe makes the round trip (one sent before it was is lost: send again)
    async with asyncio.timeout(10):
        while not listening.is_set():
            await a.run(lambda t: t.notify(b'{"probe": 1}'))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await listening.wait()

    def rolled_back(t: Txn) -> None:
        t.notify(b'{"n": 1}')
        raise RuntimeError("the decision failed")

    with pytest.raises(RuntimeError):
        await a.run(rolled_back)
    await b.run(lambda t: t.notify(b'{"own": 1}'))  # its own commit: its engine knows already
    await a.run(lambda t: t.notify(b'{"n": 2}'))
    await b.run(lambda t: t.notify(b'{"own": 2}'))
    await a.run(lambda t: t.notify(b'{"n": 3}'))
    # n 3 is the marker: PostgreSQL delivers notifications in commit order, so once it is here whatever
    # was committed before it (b's own ones, which must not come) has had its turn
    async with asyncio.timeout(10):
        await marker.wait()
    listener.cancel()
    assert got == [b'{"n": 2}', b'{"n": 3}']


async def test_outbox_rows_carry_their_partition_and_a_fetch_takes_only_the_ones_asked_for(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, _ = two
    keys = [("c", f"k{i}") for i in range(40)]

    def write(t: Txn) -> None:
        for key in keys:
            t.add_event(key, f"evt/{key[1]}", key[1].encode())

    await a.run(write)
    wanted = frozenset(contact_partition(k) for k in keys[:5])
    rows = await a.read(lambda t: t.outbox_fetch(0, 100, wanted))
    expected = [k[1].encode() for k in keys if contact_partition(k) in wanted]
    assert [r.payload for r in rows] == expected and {r.part for r in rows} <= wanted
    assert len(await a.read(lambda t: t.outbox_fetch(0, 100))) == 40
