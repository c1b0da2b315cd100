"""The store contract, run against SQLite and a real PostgreSQL server (tests/support/postgres.py).

Every `Txn` method's promise as the engine relies on it; migrations and retention; then the real engine
on PostgreSQL through the bus, and PostgreSQL killed and restarted under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import subprocess
import sys
import threading
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import psycopg
import pytest

from gateway.config import ConfigError
from gateway.contract.topics import Topics
from gateway.domain.effects import TimerKind
from gateway.domain.limits import NumberHistory
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import Budget, CampaignState, ContactState
from gateway.domain.statuses import CampaignStatus, Channel, Status
from gateway.engine.engine import Engine, Unit
from gateway.store import Conflict, Key, Store, StoreError, Txn, open_store
from gateway.store.migrate import migrate
from gateway.store.postgres import PostgresStore
from gateway.store.postgres.schema import MIGRATIONS as PG_MIGRATIONS
from gateway.store.postgres.txn import PgTxn
from gateway.store.sqlite.schema import MIGRATIONS as SQLITE_MIGRATIONS
from metrics.recorder import Recorder
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, gateway, scripted_ledger, settings_for
from tests.support.postgres import Postgres, postgres_own_server, postgres_server  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
VERSIONS = list(range(1, len(SQLITE_MIGRATIONS) + 1))  # every migration, the same numbers in both stores
_names = itertools.count()


async def url_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / f'store{next(_names)}.db'}"
    server: Postgres = request.getfixturevalue("postgres_server")
    return await asyncio.to_thread(server.create_database, f"t{next(_names)}")


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return await url_for(request.param, request, tmp_path)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    s = open_store(url)
    await s.open()
    yield s
    await s.close()


def contact(key: str, seq: int = 1, campaign: str = "c", **kw: Any) -> ContactState:
    return ContactState(campaign_id=campaign, contact_id=key, channel=Channel.VOICE, sequence=seq, **kw)


# -- contacts: compare-and-set ------------------------------------------------------------------------


async def test_put_contact_is_a_compare_and_set_on_sequence(store: Store) -> None:
    assert await store.run(lambda t: t.put_contact(contact("k"), 0, None))
    assert not await store.run(lambda t: t.put_contact(contact("k"), 0, None)), "a second create must lose"
    assert not await store.run(lambda t: t.put_contact(contact("k", 3), 2, None)), "stale expected sequence"
    assert await store.run(lambda t: t.put_contact(contact("k", 2, status=Status.CALLING), 1, "gw"))

    def read_then_write(t: Txn) -> tuple[bool, bool, ContactState | None]:
        now = t.get_contact(("c", "k"))
        assert now is not None and now.sequence == 2 and now.status is Status.CALLING
        first = t.put_contact(contact("k", 3), 2, None)
        again = t.put_contact(contact("k", 3), 2, None)  # the sequence moved (by this very transaction)
        return first, again, t.get_contact(("c", "k"))

    first, again, after = await store.run(read_then_write)
    assert (first, again) == (True, False)
    assert after is not None and after.sequence == 3
    stored = await store.run(lambda t: t.get_contact(("c", "k")))
    assert stored is not None and stored.sequence == 3 and stored.status is Status.INITIAL
    assert await store.run(lambda t: t.get_contact(("c", "nobody"))) is None


async def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    def fails(t: Txn) -> None:
        t.put_contact(contact("k"), 0, None)
        t.add_event(("c", "k"), "topic", b"e1")
        raise Conflict("decide again")

    with pytest.raises(Conflict):
        await store.run(fails)
    assert await store.run(lambda t: (t.get_contact(("c", "k")), t.events(("c", "k")), t.outbox_stats())) == (
        None,
        [],
        (0, None),
    )


async def test_reads_see_what_committed_refuse_writes_and_do_not_wait_for_the_writer(store: Store) -> None:
    """`read` (gauges, the HTTP read API, the outbox fetch, the scheduler) runs beside the writer: a read
    issued while a write transaction is open completes before it, and sees only what was committed."""
    await store.run(lambda t: t.add_event(("c", "k"), "topic", b"committed"))
    assert await store.read(lambda t: t.events(("c", "k"))) == [b"committed"]
    with pytest.raises(StoreError):
        await store.read(lambda t: t.add_event(("c", "k"), "topic", b"written by a read"))
    writing, release = threading.Event(), threading.Event()

    def slow_write(t: Txn) -> None:
        t.add_event(("c", "k"), "topic", b"uncommitted")
        t.events(("c", "k"))  # sent to the server: the transaction holds its write
        writing.set()
        release.wait(10)

    write = asyncio.create_task(store.run(slow_write))
    await asyncio.to_thread(writing.wait, 10)
    seen = await store.read(lambda t: t.events(("c", "k")))
    assert not write.done(), "the read completed while the write transaction was still open"
    assert seen == [b"committed"], "and saw nothing uncommitted"
    release.set()
    await write
    assert await store.read(lambda t: t.events(("c", "k"))) == [b"committed", b"uncommitted"]


async def test_postgres_another_writer_between_read_and_write_is_a_conflict(
    postgres_server: Postgres,  # noqa: F811
) -> None:
    """What SQLite's write lock rules out: another instance moves the contact after this transaction read
    it. The queued compare-and-set finds the sequence moved; the whole transaction rolls back."""
    url = await asyncio.to_thread(postgres_server.create_database, "racing")
    store = PostgresStore(url)
    await store.open()
    try:
        await store.run(lambda t: t.put_contact(contact("k"), 0, None))

        def racing(t: Txn) -> None:
            seen = t.get_contact(("c", "k"))
            assert seen is not None
            with psycopg.connect(url, autocommit=True) as other:  # the other instance commits first
                other.execute("UPDATE contacts SET sequence = 2 WHERE contact_id = 'k'")
            assert t.put_contact(contact("k", 2), seen.sequence, None)  # queued: the check comes with it
            t.add_event(("c", "k"), "topic", b"e2")

        with pytest.raises(Conflict):
            await store.run(racing)
        assert await store.run(lambda t: t.events(("c", "k"))) == []
    finally:
        await store.close()


async def test_prefetch_changes_nothing_a_read_sees(store: Store) -> None:
    """Reads.prefetch is a hint (PostgreSQL reads a batch's contacts, command ids and blacklist entries in
    one query each): every read after it answers as it would without it, writes of the same transaction
    included, and a contact another writer moved after the prefetch is still a Conflict (below)."""
    await store.run(
        lambda t: (t.put_contact(contact("a"), 0, None), t.put_command("c1", b"r1"), t.blacklist("+1", True))
    )

    def reads(t: Txn) -> tuple[Any, ...]:
        t.prefetch(contacts=[("c", "a"), ("c", "none")], commands=["c1", "c2"], phones=["+1", "+2"])
        a, none = t.get_contact(("c", "a")), t.get_contact(("c", "none"))
        before = (a.sequence if a else None, none, t.get_command("c1"), t.get_command("c2"))
        listed = (t.is_blacklisted("+1"), t.is_blacklisted("+2"))
        t.blacklist("+2", True)
        t.blacklist("+1", False)
        t.put_command("c2", b"r2")
        assert t.put_contact(contact("none"), 0, None)
        after = (t.is_blacklisted("+1"), t.is_blacklisted("+2"), t.get_command("c2"), t.get_contact(("c", "none")))
        return before, listed, after

    before, listed, after = await store.run(reads)
    assert before == (1, None, b"r1", None) and listed == (True, False)
    assert after[:3] == (False, True, b"r2") and after[3] is not None and after[3].sequence == 1
    assert await store.read(lambda t: (t.is_blacklisted("+1"), t.get_command("c2"))) == (False, b"r2")


async def test_postgres_a_prefetched_contact_another_writer_moved_is_a_conflict(
    postgres_server: Postgres,  # noqa: F811
) -> None:
    url = await asyncio.to_thread(postgres_server.create_database, "prefetched")
    store = PostgresStore(url)
    await store.open()
    try:
        await store.run(lambda t: t.put_contact(contact("k"), 0, None))

        def racing(t: Txn) -> None:
            t.prefetch(contacts=[("c", "k")])
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("UPDATE contacts SET sequence = 2 WHERE contact_id = 'k'")
            seen = t.get_contact(("c", "k"))
            assert seen is not None and seen.sequence == 1  # as prefetched
            assert t.put_contact(contact("k", 2), seen.sequence, None)
            t.add_event(("c", "k"), "topic", b"e2")

        with pytest.raises(Conflict):
            await store.run(racing)
        assert await store.run(lambda t: t.events(("c", "k"))) == []
    finally:
        await store.close()


async def test_postgres_connection_lost_during_commit_is_applied_once(
    postgres_server: Postgres,  # noqa: F811
) -> None:
    """The server goes away while COMMIT is under way (a deferred trigger ends its own backend, once):
    the store reconnects, reads its commit mark to learn what became of the transaction, and either keeps the
    first result (committed) or runs `fn` again (aborted). Either way the event is stored once."""
    url = await asyncio.to_thread(postgres_server.create_database, "commitlost")
    store = PostgresStore(url)
    await store.open()
    try:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("CREATE SEQUENCE die_once")
            db.execute(
                "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF nextval('die_once') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid());"
                " PERFORM pg_sleep(1); END IF; RETURN NULL; END $$"
            )
            db.execute(
                "CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON messages DEFERRABLE INITIALLY DEFERRED"
                " FOR EACH ROW EXECUTE FUNCTION die()"
            )
        calls = []

        def write(t: Txn) -> str:
            calls.append(1)
            t.add_event(("c", "k"), "topic", b"once")
            return "done"

        assert await store.run(write) == "done"
        assert 1 <= len(calls) <= 2
        assert await store.run(lambda t: t.events(("c", "k"))) == [b"once"]
        assert store.is_open
    finally:
        await store.close()


async def test_postgres_crash_during_commit_whose_xid_is_handed_out_again_is_not_taken_for_committed(
    postgres_own_server: Postgres,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server is SIGKILLed between a transaction's last write and its COMMIT. Recovery loses that
    transaction's WAL and hands its transaction id out again; another transaction of ours (the outbox
    publisher's delete, in the service) commits under it before the cut one asks what became of it.
    The cut transaction is decided again, not taken for committed: asking `pg_xact_status` for its id
    answered 'committed' here, its effects ran while its writes were gone, and its contacts were dialled
    twice for one attempt."""
    pg = postgres_own_server
    store = PostgresStore(pg.url)
    await store.open()
    try:
        await store.run(lambda t: t.add_outbox("warm", b"up"))  # whatever came before is committed
        finish = PgTxn.finish
        cut = asyncio.Event()
        loop = asyncio.get_running_loop()

        def finish_then_crash(self: PgTxn, owner: str) -> int | None:
            token = finish(self, owner)
            if not cut.is_set():
                pg.kill()  # the COMMIT goes to a server that is gone
                loop.call_soon_threadsafe(cut.set)
            return token

        monkeypatch.setattr(PgTxn, "finish", finish_then_crash)
        calls = []

        def cut_off(t: Txn) -> str:
            calls.append(1)
            t.add_event(("c", "lost"), "topic", b"decided once")
            return f"run {len(calls)}"

        first = asyncio.create_task(store.run(cut_off))
        await cut.wait()
        await asyncio.to_thread(pg.start)
        # another writer of this store reaches the new server first and takes the freed transaction id
        for i in range(3):
            await store.run(lambda t, i=i: t.add_event(("c", f"other{i}"), "topic", b"other"))
        result = await asyncio.wait_for(first, 30)
        assert await store.run(lambda t: t.events(("c", "lost"))) == [b"decided once"], "its writes are there once"
        assert result == "run 2" and len(calls) == 2, "the cut transaction was decided again, on the new server"
    finally:
        await store.close()


# -- the dispatch queue -----------------------------------------------------------------------------------


async def test_ready_queue_order_priority_then_time_then_key(store: Store) -> None:
    def setup(t: Txn) -> None:
        for camp, status in (("a", CampaignStatus.IN_PROGRESS), ("b", CampaignStatus.IN_PROGRESS)):
            t.put_campaign(CampaignState(campaign_id=camp, status=status))
        t.put_campaign(CampaignState(campaign_id="p", status=CampaignStatus.PAUSED))
        rows = [
            ("a", "late", T0 + timedelta(seconds=5), 1),
            ("a", "k2", T0, 1),
            ("b", "k1", T0, 1),
            ("a", "k1", T0, 1),
            ("b", "retry", T0 + timedelta(seconds=9), 0),  # a due retry goes before new contacts
            ("a", "future", T0 + timedelta(hours=1), 0),
            ("p", "paused", T0, 0),
        ]
        for camp, key, at, prio in rows:
            assert t.put_contact(contact(key, campaign=camp), 0, None, (at, prio))
        assert t.put_contact(contact("idle", campaign="a"), 0, None)  # not queued at all

    await store.run(setup)
    now = T0 + timedelta(seconds=10)
    assert await store.run(lambda t: t.ready_contacts(Channel.VOICE, now, 10, frozenset())) == [
        ("b", "retry"),
        ("a", "k1"),
        ("a", "k2"),
        ("b", "k1"),
        ("a", "late"),
    ]
    assert await store.run(lambda t: t.ready_contacts(Channel.VOICE, now, 2, frozenset())) == [
        ("b", "retry"),
        ("a", "k1"),
    ]
    assert await store.run(lambda t: t.ready_contacts(Channel.VOICE, now, 10, frozenset({"b"}))) == [
        ("a", "k1"),
        ("a", "k2"),
        ("a", "late"),
    ]
    assert await store.run(lambda t: t.ready_contacts(Channel.WHATSAPP, now, 10, frozenset())) == []
    assert await store.run(lambda t: t.next_ready_at(Channel.VOICE, frozenset())) == T0
    assert await store.run(lambda t: t.next_ready_at(Channel.VOICE, frozenset({"a", "b"}))) is None

    def dequeue_and_requeue(t: Txn) -> list[tuple[str, str]]:
        t.set_ready(("b", "retry"), None)
        t.set_ready(("a", "idle"), T0, 0)
        return t.ready_contacts(Channel.VOICE, now, 3, frozenset())  # sees this transaction's writes

    assert await store.run(dequeue_and_requeue) == [("a", "idle"), ("a", "k1"), ("a", "k2")]


async def test_a_queue_place_moved_with_the_write_that_moved_it(store: Store) -> None:
    """`set_ready` right after `put_contact` of the same contact (a retry scheduled, a dial started): the
    place is taken with the write (PostgreSQL sends them as one UPDATE) and another write between them,
    or a read that sent the UPDATE already, keeps their order."""
    now = T0 + timedelta(seconds=10)

    def setup(t: Txn) -> None:
        t.put_campaign(CampaignState(campaign_id="q", status=CampaignStatus.IN_PROGRESS))
        for key in ("dial", "retry", "twice", "read", "other", "alone", "joins"):
            assert t.put_contact(contact(key, campaign="q"), 0, None, (T0, 1))

    await store.run(setup)
    keys = {k: ("q", k) for k in ("dial", "retry", "twice", "read", "other", "alone", "joins")}

    def move(t: Txn) -> list[tuple[str, str]]:
        state = {k: t.get_contact(key) for k, key in keys.items()}
        assert all(s is not None for s in state.values())

        def put(k: str, seq: int, **kw: Any) -> None:
            assert t.put_contact(contact(k, seq, campaign="q", **kw), seq - 1, None)

        put("dial", 2, status=Status.CALLING, in_flight=True)
        t.set_ready(keys["dial"], None)  # the dial leaves the queue
        t.set_ready(keys["alone"], None)  # no write of its own to ride along with: a statement of its own
        put("joins", 2, status=Status.RETRY_SCHEDULED)  # joins the first UPDATEs, before that statement
        t.set_ready(keys["joins"], T0 + timedelta(seconds=3), 1)
        put("retry", 2, status=Status.RETRY_SCHEDULED)
        t.set_ready(keys["retry"], T0 + timedelta(seconds=5), 0)  # back in, as a due retry (first)
        put("twice", 2, status=Status.RETRY_SCHEDULED)
        t.set_ready(keys["twice"], None)
        put("twice", 3)
        t.set_ready(keys["twice"], T0 + timedelta(seconds=1), 1)  # the latest place wins
        put("read", 2, status=Status.RETRY_SCHEDULED)
        assert t.events(keys["read"]) == []  # a read of messages; the UPDATE of contacts stays queued
        t.set_ready(keys["read"], T0 + timedelta(seconds=2), 1)
        put("other", 2)
        assert t.ready_contacts(Channel.VOICE, now, 10, frozenset())  # sends the queued contacts
        t.set_ready(keys["other"], T0 + timedelta(hours=1), 1)  # out of reach for now
        return t.ready_contacts(Channel.VOICE, now, 10, frozenset())

    expected = [("q", "retry"), ("q", "twice"), ("q", "read"), ("q", "joins")]
    assert await store.run(move) == expected
    assert await store.run(lambda t: t.ready_contacts(Channel.VOICE, now, 10, frozenset())) == expected
    dialled = await store.run(lambda t: t.get_contact(keys["dial"]))
    assert dialled is not None and dialled.status == Status.CALLING and dialled.in_flight
    assert await store.run(lambda t: t.next_ready_at(Channel.VOICE, frozenset())) == T0 + timedelta(seconds=1)


async def test_contact_queries_in_flight_unfinished_counts(store: Store) -> None:
    def setup(t: Txn) -> None:
        t.put_campaign(CampaignState(campaign_id="c"))
        t.put_campaign(CampaignState(campaign_id="w", status=CampaignStatus.PAUSED))
        t.put_contact(contact("mine", status=Status.CALLING, in_flight=True), 0, "gw1")
        t.put_contact(contact("theirs", status=Status.CALLING, in_flight=True), 0, "gw2")
        t.put_contact(contact("orphan", status=Status.CALL_IN_PROGRESS, in_flight=True), 0, None)
        t.put_contact(contact("done", status=Status.SUCCESS), 0, None)
        t.put_contact(contact("new"), 0, None)
        wa = ContactState(campaign_id="w", contact_id="m", channel=Channel.WHATSAPP, sequence=1)
        t.put_contact(wa, 0, None)

    await store.run(setup)
    assert sorted(await store.run(lambda t: t.in_flight_contacts("gw1"))) == [("c", "mine"), ("c", "orphan")]
    assert sorted(await store.run(lambda t: t.unfinished_contacts("c"))) == [
        ("c", "mine"),
        ("c", "new"),
        ("c", "orphan"),
        ("c", "theirs"),
    ]
    assert await store.run(lambda t: t.counts("c")) == {
        "calling": 2,
        "call_in_progress": 1,
        "success": 1,
        "initial": 1,
    }
    assert sorted(await store.run(lambda t: t.all_counts())) == [
        ("c", "voice", "call_in_progress", 1),
        ("c", "voice", "calling", 2),
        ("c", "voice", "initial", 1),
        ("c", "voice", "success", 1),
        ("w", "whatsapp", "initial", 1),
    ]
    assert await store.run(lambda t: t.campaigns_with_channel(Channel.VOICE, "in_progress")) == ["c"]
    assert await store.run(lambda t: t.campaigns_with_channel(Channel.WHATSAPP, "paused")) == ["w"]
    assert await store.run(lambda t: t.campaigns_with_channel(Channel.WHATSAPP, "in_progress")) == []


# -- events and the outbox ----------------------------------------------------------------------------------


async def test_outbox_in_id_order_and_delete(store: Store) -> None:
    def write(t: Txn, n: int) -> None:
        for i in range(n):
            t.add_event(("c", f"k{i % 3}"), f"evt/{i}", f"e{i}".encode())
            if i % 4 == 0:
                t.add_outbox("evt/command", f"r{i}".encode(), retain=i % 8 == 0, correlation=b"x" if i else None)

    await store.run(lambda t: write(t, 10))
    await store.run(lambda t: t.add_outbox("evt/campaign", b"camp", retain=True))
    rows = await store.run(lambda t: t.outbox_fetch(0, 100))
    assert [r.payload for r in rows] == [
        b"e0", b"r0", b"e1", b"e2", b"e3", b"e4", b"r4", b"e5", b"e6", b"e7", b"e8", b"r8", b"e9", b"camp"
    ]  # fmt: skip
    assert [r.id for r in rows] == sorted(r.id for r in rows) and len({r.id for r in rows}) == len(rows)
    assert rows[1].retain and rows[1].correlation is None and rows[6].correlation == b"x" and not rows[6].retain
    assert rows[0].topic == "evt/0" and abs(rows[0].created_at - datetime.now(UTC).timestamp()) < 60
    assert await store.run(lambda t: t.outbox_fetch(rows[2].id, 3)) == rows[3:6]
    # rows on the wire already are skipped, and `limit` counts the others
    assert await store.run(lambda t: t.outbox_fetch(0, 3, skip=[rows[0].id, rows[2].id])) == [rows[1], *rows[3:5]]
    count, oldest = await store.run(lambda t: t.outbox_stats())
    assert count == 14 and oldest is not None and oldest <= rows[-1].created_at

    await store.run(lambda t: t.outbox_delete([r.id for r in rows[:5]]))
    left = await store.run(lambda t: t.outbox_fetch(0, 100))
    assert left == rows[5:]
    assert (await store.run(lambda t: t.outbox_stats()))[0] == 9
    # deleting from the outbox keeps the event history
    assert await store.run(lambda t: t.events(("c", "k0"))) == [b"e0", b"e3", b"e6", b"e9"]
    # the publisher's way (`published`, beside the writer on PostgreSQL): twice is once, and a reader's
    # next snapshot sees it
    await store.published([rows[5].id, rows[6].id])
    await store.published([rows[5].id, rows[6].id, rows[7].id])
    assert await store.read(lambda t: t.outbox_fetch(0, 100)) == rows[8:]
    assert await store.run(lambda t: t.events(("c", "k2"))) == [b"e2", b"e5", b"e8"]


async def test_dead_letters_leave_the_outbox_in_one_transaction_and_list_newest_first(store: Store) -> None:
    """`outbox_dead_letter` moves pending rows aside with their reason (every field kept), once: a row
    published or moved already is left; the event stays in its contact's history; `dead_letters` lists
    the newest first, up to `limit`; a failed transaction moves nothing."""

    def write(t: Txn) -> None:
        t.add_event(("c", "k"), "evt/contact/k", b"e0")
        t.add_outbox("bad/#", b"r1", retain=True, correlation=b"corr", part_key="cmd-1")
        t.add_event(("c", "k"), "evt/contact/k", b"e2")
        t.add_outbox("crm/replies", b"r3")
        t.add_event(("c", "k"), "evt/contact/k", b"e4")

    await store.run(write)
    rows = await store.read(lambda t: t.outbox_fetch(0, 100))
    assert [r.payload for r in rows] == [b"e0", b"r1", b"e2", b"r3", b"e4"]
    before = datetime.now(UTC).timestamp()

    def fails(t: Txn) -> None:
        t.outbox_dead_letter([(rows[1].id, "invalid_topic")])
        raise Conflict("decide again")

    with pytest.raises(Conflict):
        await store.run(fails)
    assert await store.read(lambda t: (t.dead_letters(), len(t.outbox_fetch(0, 100)))) == ([], 5)

    await store.published([rows[0].id])
    moved = await store.run(lambda t: t.outbox_dead_letter([(rows[1].id, "invalid_topic"), (rows[0].id, "late")]))
    assert moved == [rows[1].id], "a published row is not a dead letter"
    assert await store.run(lambda t: t.outbox_dead_letter([(rows[1].id, "again")])) == [], "moved once"
    assert await store.run(lambda t: t.outbox_dead_letter([(rows[3].id, "broker_refused: 0x87")])) == [rows[3].id]
    assert await store.run(lambda t: t.outbox_dead_letter([])) == []
    # out of the outbox, its gauges and the publisher's fetch; the contact's history keeps its events
    assert [r.payload for r in await store.read(lambda t: t.outbox_fetch(0, 100))] == [b"e2", b"e4"]
    assert (await store.read(lambda t: t.outbox_stats()))[0] == 2
    assert await store.read(lambda t: t.events(("c", "k"))) == [b"e0", b"e2", b"e4"]

    dead = await store.read(lambda t: t.dead_letters())
    assert [(d.id, d.topic, d.payload, d.reason) for d in dead] == [
        (rows[3].id, "crm/replies", b"r3", "broker_refused: 0x87"),
        (rows[1].id, "bad/#", b"r1", "invalid_topic"),
    ]
    first = dead[1]
    assert first.retain and first.correlation == b"corr" and first.part == rows[1].part
    assert dead[0].correlation is None and not dead[0].retain
    assert abs(first.created_at - rows[1].created_at) < 1
    assert before - 1 <= first.dead_at <= dead[0].dead_at <= datetime.now(UTC).timestamp() + 1
    assert await store.read(lambda t: t.dead_letters(limit=1)) == dead[:1]
    with pytest.raises(StoreError):
        await store.read(lambda t: t.outbox_dead_letter([(rows[2].id, "from a read")]))


async def test_a_row_whose_topic_is_not_utf8_reaches_the_publisher_and_its_dead_letter(url: str) -> None:
    """A raw row with bytes that are not UTF-8 in its topic (SQLite stores them; PostgreSQL refuses them at
    the INSERT): the fetch hands it over with the bad bytes as lone surrogates, never failing on it, so the
    publisher can move it; the dead letter lists the same way."""
    if not url.startswith("sqlite"):  # no such row can exist: PostgreSQL's text refuses it at the INSERT
        await migrate(url)
        with psycopg.connect(url, autocommit=True) as db, pytest.raises(psycopg.errors.CharacterNotInRepertoire):
            db.execute(
                "INSERT INTO messages (topic, payload, pending)"
                " VALUES (convert_from('\\x6576742fff', 'UTF8'), '', true)"
            )
        return
    s = open_store(url)
    await s.open()
    try:
        await s.run(lambda t: t.add_outbox("evt/ok", b"before"))
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(
                "INSERT INTO messages (topic, payload, retain, created_at, pending)"
                " VALUES (CAST(x'6576742fff' AS TEXT), x'7b7d', 0, 0, 1)"
            )
        await s.run(lambda t: t.add_outbox("evt/ok", b"after"))
        rows = await s.read(lambda t: t.outbox_fetch(0, 10))
        assert [r.topic for r in rows] == ["evt/ok", "evt/\udcff", "evt/ok"]
        assert await s.run(lambda t: t.outbox_dead_letter([(rows[1].id, "invalid_topic")])) == [rows[1].id]
        assert [r.payload for r in await s.read(lambda t: t.outbox_fetch(0, 10))] == [b"before", b"after"]
        (dead,) = await s.read(lambda t: t.dead_letters())
        assert (dead.topic, dead.payload, dead.reason) == ("evt/\udcff", b"{}", "invalid_topic")
    finally:
        await s.close()


async def test_a_big_batch_of_events_and_outbox_rows_keeps_every_field_and_its_order(store: Store) -> None:
    """Hundreds of rows in one transaction (PostgreSQL sends them as one COPY), recorded ones among them,
    read back in the middle of the transaction and after it."""
    key = ("big", "k")

    def write(t: Txn) -> list[bytes]:
        for i in range(300):
            if i % 7 == 0:
                t.record(key, f"late{i}".encode())
            elif i % 5 == 0:
                t.add_outbox(f"evt/command/{i}", f"r{i}".encode(), retain=i % 2 == 0, correlation=bytes([i % 256]))
            else:
                t.add_event(key, f"evt/{i}", f"e{i}".encode())
        seen = t.events(key)
        t.add_event(key, "evt/last", b"last")
        return seen

    seen = await store.run(write)
    history = [f"late{i}" if i % 7 == 0 else f"e{i}" for i in range(300) if i % 7 == 0 or i % 5]
    assert seen == [h.encode() for h in history]
    assert await store.run(lambda t: t.events(key)) == [*seen, b"last"]
    rows = await store.read(lambda t: t.outbox_fetch(0, 1000))
    assert [r.id for r in rows] == sorted(r.id for r in rows)
    expected = [(f"evt/{i}", f"e{i}".encode(), False, None) if i % 5 else
                (f"evt/command/{i}", f"r{i}".encode(), i % 2 == 0, bytes([i % 256]))
                for i in range(300) if i % 7]  # fmt: skip
    expected.append(("evt/last", b"last", False, None))
    assert [(r.topic, r.payload, r.retain, r.correlation) for r in rows] == expected


async def test_events_per_contact_include_recorded_ones_in_order(store: Store) -> None:
    def write(t: Txn) -> None:
        t.add_event(("c", "a"), "t", b'{"n":1}')
        t.add_event(("c", "b"), "t", b'{"n":1}')
        t.record(("c", "a"), b'{"late":true}')
        t.add_event(("c", "a"), "t", b'{"n":2}')
        t.add_event(("d", "a"), "t", b'{"other":1}')

    await store.run(write)
    assert await store.run(lambda t: t.events(("c", "a"))) == [b'{"n":1}', b'{"late":true}', b'{"n":2}']
    assert await store.run(lambda t: t.events(("c", "b"))) == [b'{"n":1}']
    assert await store.run(lambda t: t.events(("c", "zzz"))) == []
    # a recorded row is history only: never published
    assert [r.payload for r in await store.run(lambda t: t.outbox_fetch(0, 10))] == [
        b'{"n":1}',
        b'{"n":1}',
        b'{"n":2}',
        b'{"other":1}',
    ]


# -- timers ---------------------------------------------------------------------------------------------------


async def test_timers_due_in_order_fire_once_and_cancel(store: Store) -> None:
    def setup(t: Txn) -> None:
        t.add_timer(TimerKind.ACW, "c", "k1", T0 + timedelta(seconds=3))
        t.add_timer(TimerKind.BCW, "c", "k2", T0 + timedelta(seconds=1))
        t.add_timer(TimerKind.CAMPAIGN_START, "c", None, T0 + timedelta(seconds=2))
        t.add_timer(TimerKind.AMBIGUOUS, "c", "k1", T0 + timedelta(hours=1))

    await store.run(setup)
    assert await store.run(lambda t: t.next_timer_at()) == T0 + timedelta(seconds=1)
    due = await store.run(lambda t: t.due_timers(T0 + timedelta(seconds=5), 10))
    assert [(d.kind, d.contact_id, d.due_at) for d in due] == [
        (TimerKind.BCW, "k2", T0 + timedelta(seconds=1)),
        (TimerKind.CAMPAIGN_START, None, T0 + timedelta(seconds=2)),
        (TimerKind.ACW, "k1", T0 + timedelta(seconds=3)),
    ]
    assert [d.kind for d in await store.run(lambda t: t.due_timers(T0 + timedelta(seconds=5), 1))] == [TimerKind.BCW]
    assert await store.run(lambda t: t.delete_timer(due[0].id))
    assert not await store.run(lambda t: t.delete_timer(due[0].id)), "a timer fires once"
    await store.run(lambda t: t.cancel_timers(("c", "k1")))  # both of k1's, not the campaign's
    left = await store.run(lambda t: t.due_timers(T0 + timedelta(days=1), 10))
    assert [(d.kind, d.contact_id) for d in left] == [(TimerKind.CAMPAIGN_START, None)]

    def cancel_then_add(t: Txn) -> list[str | None]:  # order within one transaction holds
        t.add_timer(TimerKind.ACW, "c", "k3", T0)
        t.cancel_timers(("c", "k3"))
        t.add_timer(TimerKind.BCW, "c", "k3", T0)
        return [str(d.kind) for d in t.due_timers(T0, 10)]

    assert await store.run(cancel_then_add) == ["bcw"]
    assert await store.run(lambda t: t.next_timer_at()) == T0


# -- campaigns --------------------------------------------------------------------------------------------------


async def test_campaign_counters_are_atomic_across_stores(url: str) -> None:
    one, two = open_store(url), open_store(url)
    await one.open()
    await two.open()
    try:
        budget = Budget(max_talk_minutes=2.5, max_contacts=100)
        await one.run(lambda t: t.put_campaign(CampaignState(campaign_id="c", budget=budget)))
        assert await one.run(lambda t: t.bump_campaign("nope", dialed=1)) == (0.0, None)
        bumps = [s.run(lambda t: t.bump_campaign("c", dialed=1, talk_s=1.5)) for s in (one, two) for _ in range(40)]
        results = await asyncio.gather(*bumps)
        assert sorted(r[0] for r in results) == [1.5 * i for i in range(1, 81)], "every bump saw its own total"
        assert {r[1] for r in results} == {2.5}
        # settings and status are written without touching the counters
        paused = CampaignState(campaign_id="c", status=CampaignStatus.PAUSED, budget=budget, talk_seconds=0.0)
        await two.run(lambda t: t.put_campaign(paused))
        camp = await one.run(lambda t: t.get_campaign("c"))
        assert camp is not None
        assert (camp.status, camp.dialed_contacts, camp.talk_seconds) == (CampaignStatus.PAUSED, 80, 120.0)
        assert camp.budget == budget
        assert await one.run(lambda t: t.get_campaign("nope")) is None
    finally:
        await one.close()
        await two.close()


async def test_campaign_read_after_write_in_one_transaction(store: Store) -> None:
    def create_then_bump(t: Txn) -> tuple[CampaignState | None, tuple[float, float | None], CampaignState | None]:
        t.put_campaign(CampaignState(campaign_id="c", budget=Budget(max_talk_minutes=1)))
        created = t.get_campaign("c")
        bumped = t.bump_campaign("c", dialed=2, talk_s=30)
        return created, bumped, t.get_campaign("c")

    created, bumped, after = await store.run(create_then_bump)
    assert created is not None and created.dialed_contacts == 0
    assert bumped == (30.0, 1.0)
    assert after is not None and (after.dialed_contacts, after.talk_seconds) == (2, 30.0)


async def test_dialled_counts_queued_with_the_writes_are_seen_and_kept(store: Store) -> None:
    """`count_dialed` may travel with the batch's other writes: the same transaction reads it back, a
    bump with talk time after it includes it, and a new campaign's INSERT goes first."""

    def create_count_read(t: Txn) -> tuple[int | None, tuple[float, float | None], int | None]:
        t.put_campaign(CampaignState(campaign_id="d", budget=Budget(max_talk_minutes=1)), created=True)
        for _ in range(3):
            t.count_dialed("d")
        seen = t.get_campaign("d")
        t.count_dialed("d", 2)
        bumped = t.bump_campaign("d", talk_s=6)
        t.count_dialed("d")
        again = t.get_campaign("d")
        return seen and seen.dialed_contacts, bumped, again and again.dialed_contacts

    assert await store.run(create_count_read) == (3, (6.0, 1.0), 6)
    await store.run(lambda t: [t.count_dialed("d") for _ in range(4)])
    camp = await store.read(lambda t: t.get_campaign("d"))
    assert camp is not None and (camp.dialed_contacts, camp.talk_seconds) == (10, 6.0)


async def test_talk_time_counted_without_an_answer_is_seen_and_kept(store: Store) -> None:
    """`count_talk` (a campaign without a talk budget) may travel with the batch's writes too: a campaign
    this transaction already read shows it at once, with its own dialled counts, and a bump after it
    returns the total with it."""
    await store.run(lambda t: t.put_campaign(CampaignState(campaign_id="t"), created=True))

    def count_and_read(t: Txn) -> tuple[float | None, int | None, tuple[float, float | None], float | None]:
        before = t.get_campaign("t")
        assert before is not None and before.talk_seconds == 0.0
        t.count_talk("t", 12.5)
        t.count_dialed("t")
        t.count_talk("t", 7.5)
        seen = t.get_campaign("t")
        bumped = t.bump_campaign("t", talk_s=1.0)
        t.count_talk("t", 4.0)
        again = t.get_campaign("t")
        return seen and seen.talk_seconds, seen and seen.dialed_contacts, bumped, again and again.talk_seconds

    assert await store.run(count_and_read) == (20.0, 1, (21.0, None), 25.0)
    await store.run(lambda t: [t.count_talk("t", 1.0) for _ in range(3)])
    camp = await store.read(lambda t: t.get_campaign("t"))
    assert camp is not None and (camp.dialed_contacts, camp.talk_seconds) == (1, 28.0)


# -- blacklist, command ids, wamids ---------------------------------------------------------------------------


async def test_a_batch_of_command_results_is_kept_in_order_and_read_back(store: Store) -> None:
    """Hundreds of results in one transaction (SQLite queues them as multi-row INSERTs): a repeated id
    keeps its last result, and a look-up of an id this transaction did not write sees the stored one."""
    await store.run(lambda t: t.put_command("old", b"stored"))

    def write(t: Txn) -> tuple[bytes | None, bytes | None]:
        for i in range(170):
            t.put_command(f"cmd-{i}", f"r{i}".encode())
        t.put_command("cmd-5", b"again")
        return t.get_command("old"), t.get_command("cmd-169")

    assert await store.run(write) == (b"stored", b"r169")
    got = await store.read(lambda t: [t.get_command(f"cmd-{i}") for i in range(170)])
    assert got == [b"again" if i == 5 else f"r{i}".encode() for i in range(170)]


async def test_blacklist_commands_wamids(store: Store) -> None:
    def first(t: Txn) -> tuple[bool, bool, bytes | None, Any]:
        t.blacklist("+420601123456", True)
        t.blacklist("+420601123456", True)  # twice is once
        t.blacklist("+420601000000", True)
        t.blacklist("+420601000000", False)
        t.put_command("cmd-1", b'{"accepted":true}')
        t.map_wamid("wamid.A", ("c", "k1"))
        return (
            t.is_blacklisted("+420601123456"),
            t.is_blacklisted("+420601000000"),
            t.get_command("cmd-1"),
            t.lookup_wamid("wamid.A"),
        )

    assert await store.run(first) == (True, False, b'{"accepted":true}', ("c", "k1"))
    assert await store.run(lambda t: t.get_command("cmd-2")) is None
    await store.run(lambda t: t.put_command("cmd-1", b'{"accepted":false}'))
    assert await store.run(lambda t: t.get_command("cmd-1")) == b'{"accepted":false}'
    await store.run(lambda t: t.map_wamid("wamid.A", ("c", "k2")))
    assert await store.run(lambda t: t.lookup_wamid("wamid.A")) == ("c", "k2")
    assert await store.run(lambda t: t.lookup_wamid("wamid.B")) is None
    await store.run(lambda t: t.blacklist("+420601123456", False))
    assert not await store.run(lambda t: t.is_blacklisted("+420601123456"))


# -- WhatsApp inbound: message ids, marketing opt-outs, template states, contacts by number (issue 22) ---------


async def test_an_inbound_wamid_is_new_once_in_a_transaction_across_them_and_after_a_rollback(store: Store) -> None:
    def post(t: Txn) -> list[bool]:
        # two identical messages in one POST, and another one beside them
        return [
            t.note_inbound("wamid.IN1", "pn-1", T0),
            t.note_inbound("wamid.IN1", "pn-1", T0),
            t.note_inbound("wamid.IN2", "pn-1", T0),
        ]

    assert await store.run(post) == [True, False, True]
    assert await store.run(post) == [False, False, False], "Meta repeats the webhook: nothing is new"
    assert await store.run(lambda t: t.note_inbound("wamid.IN1", "pn-2", T0)) is False, "the wamid alone decides"

    def failed(t: Txn) -> None:
        assert t.note_inbound("wamid.IN3", "pn-1", T0)
        raise RuntimeError("the batch failed")

    with pytest.raises(RuntimeError):
        await store.run(failed)
    assert await store.run(lambda t: t.note_inbound("wamid.IN3", "pn-1", T0)), "a rolled-back note is no note"
    with pytest.raises(StoreError):
        await store.read(lambda t: cast(Txn, t).note_inbound("wamid.IN4", "pn-1", T0))


async def test_inbound_wamids_are_pruned_by_the_time_they_were_received(store: Store) -> None:
    def write(t: Txn) -> None:
        t.note_inbound("wamid.old", "pn-1", T0 - timedelta(days=31))
        t.note_inbound("wamid.new", "pn-1", T0 - timedelta(days=29))

    await store.run(write)
    assert (await store.run(lambda t: t.prune(T0 - timedelta(days=30))))["inbound_messages"] == 1
    assert await store.run(lambda t: [t.note_inbound(w, "pn-1", T0) for w in ("wamid.old", "wamid.new")]) == [
        True,  # pruned: a repeat after retention_days is new again (Meta repeats for at most a few days)
        False,
    ]

    def prune_then_note(t: Txn) -> tuple[int, bool]:
        assert not t.note_inbound("wamid.new", "pn-1", T0)
        pruned = t.prune(T0 + timedelta(days=1))["inbound_messages"]
        return pruned, t.note_inbound("wamid.new", "pn-1", T0 + timedelta(days=1))

    assert await store.run(prune_then_note) == (2, True)


async def test_marketing_opt_outs_stop_resume(store: Store) -> None:
    phone = "+420601123456"

    def stop(t: Txn) -> tuple[bool, bool, bool]:
        before = t.marketing_opted_out(phone)
        t.set_marketing_opt_out(phone, True, T0)
        t.set_marketing_opt_out(phone, True, T0 + timedelta(hours=1))  # twice is once
        t.set_marketing_opt_out("+420601000000", True, T0)
        t.set_marketing_opt_out("+420601000000", False, T0)
        return before, t.marketing_opted_out(phone), t.marketing_opted_out("+420601000000")

    assert await store.run(stop) == (False, True, False)
    assert await store.read(lambda t: (t.marketing_opted_out(phone), t.marketing_opted_out("+420601000000"))) == (
        True,
        False,
    )
    assert not await store.read(lambda t: t.marketing_opted_out("420601123456")), "stored as given: E.164 with +"
    assert not await store.read(lambda t: t.is_blacklisted(phone)), "a marketing opt-out is not the blacklist"
    await store.run(lambda t: t.set_marketing_opt_out("+420609999999", False, T0))  # resume of nobody: nothing
    await store.run(lambda t: t.set_marketing_opt_out(phone, False, T0 + timedelta(days=1)))
    assert not await store.run(lambda t: t.marketing_opted_out(phone))
    assert (await store.run(lambda t: t.prune(T0 + timedelta(days=400)))).get("marketing_opt_outs") is None
    await store.run(lambda t: t.set_marketing_opt_out(phone, True, T0))
    await store.run(lambda t: t.prune(T0 + timedelta(days=400)))
    assert await store.read(lambda t: t.marketing_opted_out(phone)), "an opt-out is state, never pruned"


async def test_number_history_over_every_campaign_since_a_time_with_this_transactions_notes(store: Store) -> None:
    """The caps' facts about a number (docs/lawful-calling.md): every attempt and the latest refusal,
    opt-out and abandon at or after `since`, whichever campaign noted them; the notes of the reading
    transaction itself are read too (two dials of one number in one dispatch turn)."""
    day = timedelta(days=1)
    await store.run(
        lambda t: (
            t.note_number("+420601000001", "attempt", T0 - 40 * day, "old"),  # before `since`: not read
            t.note_number("+420601000001", "attempt", T0 - 2 * day, "a"),
            t.note_number("+420601000001", "refusal", T0 - 2 * day, "a"),
            t.note_number("+420601000001", "refusal", T0 - 3 * day, "b"),
            t.note_number("+420601000001", "abandon", T0 - day, "b"),
            t.note_number("+420601000002", "attempt", T0, "a"),  # another number
        )
    )
    history = await store.read(lambda t: t.number_history("+420601000001", T0 - 30 * day))
    assert history.attempts == (T0 - 2 * day,)
    assert (history.last_refusal, history.last_opt_out, history.last_abandon) == (T0 - 2 * day, None, T0 - day)

    def dial_twice(t: Txn) -> tuple[int, int]:
        first = t.number_history("+420601000002", T0 - day)
        t.note_number("+420601000002", "attempt", T0 + day, "c")
        t.note_number("+420601000002", "opt_out", T0 + day, "c")
        second = t.number_history("+420601000002", T0 - day)
        assert second.last_opt_out == T0 + day
        return len(first.attempts), len(second.attempts)

    assert await store.run(dial_twice) == (1, 2)
    assert (await store.read(lambda t: t.number_history("+420601000002", T0 + day))).attempts == (T0 + day,)
    assert await store.read(lambda t: t.number_history("+420601000009", T0 - 30 * day)) == NumberHistory()
    # retention: the number history goes only with its own cutoff (kept 366 days, longer than the history)
    assert "number_history" not in await store.run(lambda t: t.prune(T0 + 2 * day))
    assert (await store.run(lambda t: t.prune(T0 - 40 * day, T0 - 10 * day)))["number_history"] == 1
    assert (await store.read(lambda t: t.number_history("+420601000001", T0 - 60 * day))).attempts == (T0 - 2 * day,)


async def test_postgres_two_instances_read_a_numbers_history_one_after_the_other(
    postgres_server: Postgres,  # noqa: F811
) -> None:
    """What the SQLite file's one writer gives for free: two instances dialling one number. The one that
    reads its history first holds the number until it commits; the other's read waits for it and sees its
    attempt, so a cap of one attempt lets exactly one of them through."""
    url = await asyncio.to_thread(postgres_server.create_database, "numbers")
    first, second = PostgresStore(url), PostgresStore(url)
    await first.open()
    await second.open()
    try:
        holding, release = threading.Event(), threading.Event()

        def dial(t: Txn) -> int:
            seen = len(t.number_history("+420601000001", T0 - timedelta(days=30)).attempts)
            t.note_number("+420601000001", "attempt", T0, "a")
            holding.set()
            release.wait(10)
            return seen

        one = asyncio.create_task(first.run(dial))
        await asyncio.to_thread(holding.wait, 10)
        other = asyncio.create_task(
            second.run(lambda t: len(t.number_history("+420601000001", T0 - timedelta(days=30)).attempts))
        )
        done, _ = await asyncio.wait({other}, timeout=0.5)
        assert not done, "the second instance read the number while the first held it"
        # another number is not held
        assert (await second.run(lambda t: t.number_history("+420601000002", T0 - timedelta(days=30)))).attempts == ()
        release.set()
        assert await one == 0
        assert await other == 1, "the second read waited for the first's commit and saw its attempt"
    finally:
        await first.close()
        await second.close()


async def test_template_states_exact_language_first_then_every_language(store: Store) -> None:
    def write(t: Txn) -> list[tuple[str, str | None] | None]:
        t.set_template_state("reminder", "cs", "PAUSED", "quality: low", T0)
        t.set_template_state("reminder", "", "DISABLED", None, T0)
        t.set_template_state("promo", "en_US", "REJECTED", "INVALID_FORMAT", T0)
        return [t.template_state("reminder", "cs"), t.template_state("reminder", "en"), t.template_state("x", "cs")]

    assert await store.run(write) == [("PAUSED", "quality: low"), ("DISABLED", None), None]
    got = await store.read(
        lambda t: [
            t.template_state("reminder", "cs"),
            t.template_state("reminder", "de"),  # no row for "de": the name's row for every language
            t.template_state("reminder", ""),
            t.template_state("promo", "en_US"),
            t.template_state("promo", "en"),  # no "" row for promo
            t.template_state("Reminder", "cs"),  # names are Meta's, compared exactly
        ]
    )
    assert got == [
        ("PAUSED", "quality: low"),
        ("DISABLED", None),
        ("DISABLED", None),
        ("REJECTED", "INVALID_FORMAT"),
        None,
        None,
    ]

    def reinstate(t: Txn) -> tuple[str, str | None] | None:
        t.set_template_state("reminder", "cs", "APPROVED", None, T0 + timedelta(hours=1))  # the last one stands
        return t.template_state("reminder", "cs")

    assert await store.run(reinstate) == ("APPROVED", None)
    assert await store.read(lambda t: t.template_state("reminder", "cs")) == ("APPROVED", None)
    assert (await store.run(lambda t: t.prune(T0 + timedelta(days=400)))).get("template_states") is None
    assert await store.read(lambda t: t.template_state("reminder", "de")) == ("DISABLED", None), "never pruned"


def wa(campaign: str, key: str, phone: str | None, created: datetime | None, **kw: Any) -> ContactState:
    return ContactState(
        campaign_id=campaign,
        contact_id=key,
        channel=Channel.WHATSAPP,
        sequence=1,
        phone=phone,
        created_at=created,
        **kw,
    )


async def test_latest_contact_by_phone_newest_on_a_campaign_in_progress(store: Store) -> None:
    phone, other = "+420601123456", "+420601999999"

    def setup(t: Txn) -> None:
        for campaign, status in (("a", "in_progress"), ("b", "in_progress"), ("p", "paused"), ("v", "in_progress")):
            t.put_campaign(CampaignState(campaign_id=campaign, status=CampaignStatus(status)))
        t.put_contact(wa("a", "k1", phone, T0), 0, None)
        t.put_contact(wa("b", "k1", phone, T0 + timedelta(hours=1)), 0, None)
        t.put_contact(wa("b", "k2", other, T0 + timedelta(hours=5)), 0, None)
        t.put_contact(wa("p", "k1", phone, T0 + timedelta(hours=2)), 0, None)  # newer, but its campaign is paused
        t.put_contact(contact("k1", campaign="v", phone=phone, created_at=T0 + timedelta(hours=3)), 0, None)  # voice
        t.put_contact(wa("a", "k9", None, T0 + timedelta(hours=9)), 0, None)  # an invalid number

    await store.run(setup)
    assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, phone)) == ("b", "k1")
    assert await store.read(lambda t: t.latest_contact_by_phone("whatsapp", other)) == ("b", "k2")
    assert await store.read(lambda t: t.latest_contact_by_phone(Channel.VOICE, phone)) == ("v", "k1")
    assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, "+420600000000")) is None
    assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, "420601123456")) is None

    def pause_b(t: Txn) -> Key | None:
        t.put_campaign(CampaignState(campaign_id="b", status=CampaignStatus.PAUSED))
        return t.latest_contact_by_phone(Channel.WHATSAPP, phone)  # sees this transaction's writes

    assert await store.run(pause_b) == ("a", "k1")

    def resume_p_and_add(t: Txn) -> tuple[Key | None, Key | None]:
        t.put_campaign(CampaignState(campaign_id="p", status=CampaignStatus.IN_PROGRESS))
        first = t.latest_contact_by_phone(Channel.WHATSAPP, phone)
        assert t.get_contact(("a", "k3")) is None  # read as missing: its INSERT may be queued
        t.put_contact(wa("a", "k3", phone, T0 + timedelta(hours=4)), 0, None)
        return first, t.latest_contact_by_phone(Channel.WHATSAPP, phone)

    assert await store.run(resume_p_and_add) == (("p", "k1"), ("a", "k3"))

    def ties(t: Txn) -> Key | None:
        t.put_campaign(CampaignState(campaign_id="x", status=CampaignStatus.IN_PROGRESS))
        t.put_campaign(CampaignState(campaign_id="y", status=CampaignStatus.IN_PROGRESS))
        for campaign, key in (("x", "k2"), ("y", "k1"), ("x", "k1")):  # one intake: the same time
            t.put_contact(wa(campaign, key, "+420602000000", T0), 0, None)
        t.put_contact(wa("x", "k0", "+420602000000", None), 0, None)  # no creation time: never the newest
        return t.latest_contact_by_phone(Channel.WHATSAPP, "+420602000000")

    assert await store.run(ties) == ("y", "k1")

    # the number and creation time are the contact's at its INSERT; later writes keep them
    await store.run(
        lambda t: t.put_contact(wa("a", "k3", phone, T0 + timedelta(hours=4), status=Status.IN_PROGRESS), 1, "gw")
    )
    assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, phone)) == ("a", "k3")


async def test_the_engine_units_pass_through_and_create_contacts_with_their_number(store: Store) -> None:
    clock = iter(T0 + timedelta(minutes=i) for i in itertools.count())
    engine = Engine(store, "gw", Topics("telgate"), Recorder("t"), clock=lambda: next(clock))
    task = asyncio.create_task(engine.run())
    try:
        phone = "+420601123456"
        for campaign, key in (("a", "k1"), ("b", "k1")):
            state = ContactState(campaign_id=campaign, contact_id=key, channel=Channel.WHATSAPP)
            signal = Signal(Kind.CREATE, phone=phone)
            await engine.execute(
                lambda u, k=(campaign, key), s=state, g=signal: (u.campaign(k[0]), u.apply(k, g, create=s))
            )
        assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, phone)) == ("b", "k1")

        def inbound(u: Unit) -> list[Any]:
            u.set_marketing_opt_out(phone, True)
            u.set_template_state("reminder", "", "PAUSED", "low quality")
            return [
                u.note_inbound("wamid.X", "pn-1"),
                u.note_inbound("wamid.X", "pn-1"),
                u.read.marketing_opted_out(phone),
                u.read.template_state("reminder", "cs"),
                u.read.latest_contact_by_phone(Channel.WHATSAPP, phone),
            ]

        assert await engine.execute(inbound) == [True, False, True, ("PAUSED", "low quality"), ("b", "k1")]
        assert await engine.execute(lambda u: u.note_inbound("wamid.X", "pn-1")) is False
        await engine.execute(lambda u: u.set_marketing_opt_out(phone, False))
        assert not await store.read(lambda t: t.marketing_opted_out(phone))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- retention ------------------------------------------------------------------------------------------------


async def test_prune_deletes_history_commands_and_wamids_keeps_the_outbox(store: Store) -> None:
    def write(t: Txn) -> None:
        t.add_event(("c", "k"), "t", b"published")
        t.add_event(("c", "k"), "t", b"pending")
        t.record(("c", "k"), b"recorded")
        t.put_command("cmd", b"{}")
        t.map_wamid("wamid.A", ("c", "k"))
        t.note_inbound("wamid.IN", "pn-1", datetime.now(UTC))

    await store.run(write)
    rows = await store.run(lambda t: t.outbox_fetch(0, 10))
    await store.run(lambda t: t.outbox_delete([rows[0].id]))
    pending = await store.run(lambda t: t.outbox_fetch(0, 10))
    await store.run(lambda t: t.add_outbox("bad/#", b"dead"))
    dead = [r for r in await store.run(lambda t: t.outbox_fetch(0, 10)) if r not in pending]
    assert await store.run(lambda t: t.outbox_dead_letter([(dead[0].id, "invalid_topic")])) == [dead[0].id]
    now = datetime.now(UTC)
    assert await store.run(lambda t: t.prune(now - timedelta(days=1))) == {
        "messages": 0,
        "commands": 0,
        "wamids": 0,
        "dead_letters": 0,
        "inbound_messages": 0,
    }
    assert await store.run(lambda t: t.prune(now + timedelta(seconds=5))) == {
        "messages": 3,  # the dead letter's row left the outbox: it is history like a published one
        "commands": 1,
        "wamids": 1,
        "dead_letters": 1,
        "inbound_messages": 1,
    }
    assert await store.run(lambda t: t.dead_letters()) == []
    assert await store.run(lambda t: t.events(("c", "k"))) == [b"pending"], "the outbox is never pruned"
    assert [r.payload for r in await store.run(lambda t: t.outbox_fetch(0, 10))] == [b"pending"]
    assert await store.run(lambda t: (t.get_command("cmd"), t.lookup_wamid("wamid.A"))) == (None, None)
    assert await store.run(lambda t: t.note_inbound("wamid.IN", "pn-1", datetime.now(UTC))), "pruned: new again"


def test_retention_days_is_validated(tmp_path: Path) -> None:
    assert settings_for("mqtt://127.0.0.1:1", tmp_path).store.retention_days == 30
    with pytest.raises(ConfigError) as err:
        settings_for("mqtt://127.0.0.1:1", tmp_path, store={"retention_days": 0})
    assert err.value.key == "store.retention_days"


# -- migrations -----------------------------------------------------------------------------------------------


async def test_migrations_apply_once(url: str) -> None:
    first = open_store(url)
    await first.open()
    assert first.migrated == VERSIONS
    await first.run(lambda t: t.put_contact(contact("k"), 0, None))
    await first.close()
    again = open_store(url)
    await again.open()
    assert again.migrated == []
    assert await again.run(lambda t: t.get_contact(("c", "k"))) is not None
    await again.close()
    assert await migrate(url) == []


async def test_a_schema_newer_than_this_build_is_refused(url: str) -> None:
    assert await migrate(url) == VERSIONS
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    else:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute("INSERT INTO schema_version (version, what) VALUES (99, 'from the future')")
    with pytest.raises(StoreError, match="schema version 99"):
        await migrate(url)


async def test_migration_6_gives_existing_contacts_their_number_and_creation_time(url: str) -> None:
    """A store at version 5 with contacts: after the upgrade `latest_contact_by_phone` finds them, in their
    creation order beside contacts created after it."""
    phone = "+420601123456"
    old = [
        wa("a", "k1", phone, T0 + timedelta(microseconds=250_000)),
        wa("a", "k2", phone, T0 + timedelta(hours=2)),
        wa("a", "k3", None, T0 + timedelta(hours=3)),  # an invalid number: nothing to find it by
    ]
    campaign = CampaignState(campaign_id="a").model_dump_json(exclude={"dialed_contacts", "talk_seconds"})
    rows = [(c.contact_id, c.model_dump_json(exclude_defaults=True)) for c in old]
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(
                "CREATE TABLE schema_version"
                " (version INTEGER PRIMARY KEY, what TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            for step in SQLITE_MIGRATIONS[:5]:
                for statement in step.statements:
                    db.execute(statement)
                db.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (step.version, step.what))
            db.execute("INSERT INTO campaigns (campaign_id, state, status) VALUES ('a', ?, 'in_progress')", (campaign,))
            for key, blob in rows:
                db.execute(
                    "INSERT INTO contacts (campaign_id, contact_id, channel, status, sequence, state)"
                    " VALUES ('a', ?, 'whatsapp', 'initial', 1, ?)",
                    (key, blob),
                )
    else:
        with psycopg.connect(url) as pg:
            pg.execute(
                "CREATE TABLE schema_version (version integer PRIMARY KEY, what text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for step in PG_MIGRATIONS[:5]:
                for statement in step.statements:
                    pg.execute(statement)
                pg.execute("INSERT INTO schema_version (version, what) VALUES (%s, %s)", (step.version, step.what))
            pg.execute(
                "INSERT INTO campaigns (campaign_id, state, status) VALUES ('a', %s::jsonb, 'in_progress')", (campaign,)
            )
            for key, blob in rows:
                pg.execute(
                    "INSERT INTO contacts (campaign_id, contact_id, channel, status, sequence, state)"
                    " VALUES ('a', %s, 'whatsapp', 'initial', 1, %s)",
                    (key, blob),
                )
    assert await migrate(url) == [6, 7]
    store = open_store(url)
    await store.open()
    try:
        assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, phone)) == ("a", "k2")

        def newer_and_older(t: Txn) -> Key | None:
            t.put_contact(wa("a", "k0", phone, T0), 0, None)  # created before k1
            t.put_contact(wa("a", "k4", phone, T0 + timedelta(hours=1)), 0, None)
            t.put_contact(wa("a", "k2", phone, T0 + timedelta(hours=2), status=Status.IN_PROGRESS), 1, "gw")
            return t.latest_contact_by_phone(Channel.WHATSAPP, phone)

        assert await store.run(newer_and_older) == ("a", "k2"), "k2 kept its time through a later write"
        await store.run(lambda t: t.put_contact(wa("a", "k5", phone, T0 + timedelta(hours=2, seconds=1)), 0, None))
        assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, phone)) == ("a", "k5")
        await store.run(lambda t: t.put_campaign(CampaignState(campaign_id="a", status=CampaignStatus.PAUSED)))
        assert await store.read(lambda t: t.latest_contact_by_phone(Channel.WHATSAPP, phone)) is None
    finally:
        await store.close()


async def test_migrate_adopts_an_existing_sqlite_file_as_version_1(tmp_path: Path) -> None:
    """A telgate.db from before migrations: today's tables and data, no schema_version."""
    path = tmp_path / "telgate.db"
    with sqlite3.connect(path) as db:
        for statement in SQLITE_MIGRATIONS[0].statements:
            db.execute(statement)
        blob = contact("k").model_dump_json(exclude_defaults=True)
        db.execute(
            "INSERT INTO contacts (campaign_id, contact_id, channel, status, sequence, state) VALUES (?,?,?,?,?,?)",
            ("c", "k", "voice", "initial", 1, blob),
        )
        db.execute("INSERT INTO wamids VALUES ('wamid.old', 'c', 'k')")
        db.execute("INSERT INTO commands VALUES ('cmd', x'7b7d', 0)")
    url = f"sqlite:///{path}"
    assert await migrate(url) == VERSIONS
    assert await migrate(url) == []
    store = open_store(url)
    await store.open()
    try:
        assert store.migrated == []
        got = await store.run(lambda t: (t.get_contact(("c", "k")), t.lookup_wamid("wamid.old"), t.get_command("cmd")))
        assert got == (contact("k"), ("c", "k"), b"{}")
        # the old wamid counts its age from the upgrade: kept by today's pruning, not by a later one
        assert (await store.run(lambda t: t.prune(datetime.now(UTC) - timedelta(days=30))))["wamids"] == 0
        assert (await store.run(lambda t: t.prune(datetime.now(UTC) + timedelta(seconds=5))))["wamids"] == 1
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT version FROM schema_version ORDER BY version")] == VERSIONS


# -- the engine on PostgreSQL, end to end ---------------------------------------------------------------------


def sequences_once(b: Backend) -> dict[tuple[str, str], list[int]]:
    """Per contact the sequences received: each once, or repeated with the same event_id (a QoS 1
    redelivery), never two events for one sequence (decided twice)."""
    ids: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for e in b.events:
        key = (e["campaign_id"], e["contact_id"])
        seen = ids[key].setdefault(e["sequence"], e["event_id"])
        assert seen == e["event_id"], f"{key} sequence {e['sequence']} decided twice"
    return {key: sorted(seqs) for key, seqs in ids.items()}


async def dial_all(b: Backend, n: int, campaign: str = "pg") -> None:
    for i in range(n):  # the number's last digit picks the outcome: answered, busy, no answer, failure
        cmd = {"command_id": f"{campaign}-{i}", "campaign_id": campaign, "contact_id": f"k{i}"}
        await b.send("dial", {**cmd, "phone": f"+42060123456{i % 4}"})


async def test_engine_on_postgres_end_to_end(
    broker: Mosquitto,
    tmp_path: Path,
    postgres_server: Postgres,  # noqa: F811
) -> None:
    pg_url = await asyncio.to_thread(postgres_server.create_database, "engine")
    assert await migrate(pg_url) == VERSIONS
    with psycopg.connect(pg_url, autocommit=True) as db:  # a command id from before the retention window
        db.execute("INSERT INTO commands VALUES ('ancient', '{}', now() - interval '31 days')")
    n = 24
    async with (
        backend(broker.url) as b,
        gateway(settings_for(broker.url, tmp_path, store={"url": pg_url}), delay_s=0.02) as app,
    ):
        assert isinstance(app.store, PostgresStore)
        await dial_all(b, n)
        await b.wait_for(lambda: all(b.final("pg", f"k{i}") for i in range(n)) and len(b.results) >= n, 30)
        assert all(r["accepted"] for r in b.results)
        seqs = sequences_once(b)
        assert all(seqs[("pg", f"k{i}")] == list(range(1, len(seqs[("pg", f"k{i}")]) + 1)) for i in range(n))
        final = ["success", "completed_without_answer", "completed_without_answer", "dial_failed"]
        assert [b.statuses("pg", f"k{i}")[-1] for i in range(n)] == [final[i % 4] for i in range(n)]
        seen = await scripted_ledger(b, app, Channel.VOICE)
        assert seen.compared == n and seen.wire == seen.attempts == n + n // 2  # busy, no answer: tried twice
        state = await app.store.run(lambda t: (t.get_contact(("pg", "k0")), t.events(("pg", "k0"))))
        assert state[0] is not None and len(state[1]) == len(seqs[("pg", "k0")])
        # the app prunes at start (then hourly): the old command id is gone, today's are kept
        assert await app.store.run(lambda t: (t.get_command("ancient"), t.get_command("pg-0") is not None)) == (
            None,
            True,
        )


async def readyz(port: int | None) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
        return resp.status


async def poll(what: str, check: Any, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_postgres_killed_and_restarted_mid_run(
    broker: Mosquitto,
    tmp_path: Path,
    postgres_own_server: Postgres,  # noqa: F811
) -> None:
    pg = postgres_own_server
    n = 120
    settings = settings_for(broker.url, tmp_path, store={"url": pg.url})
    async with backend(broker.url) as b, gateway(settings, delay_s=0.2) as app:
        await dial_all(b, n, "kill")
        await b.wait_for(lambda: len(b.events) >= n, 30)  # under way: calls on the wire, events flowing
        assert await readyz(app.http_port) == 200
        await asyncio.to_thread(pg.kill)
        assert sum(b.final("kill", f"k{i}") for i in range(n)) < n // 2, "the kill came too late to matter"
        await poll("/readyz 503", lambda: _is(readyz(app.http_port), 503), 10)
        # down for a while: signals from calls on the wire wait, queued behind the transaction the store holds
        await b.wait_for(lambda: app.engine._queue.qsize() > 0, 10)
        assert await readyz(app.http_port) == 503
        await asyncio.to_thread(pg.start)
        await poll("/readyz 200", lambda: _is(readyz(app.http_port), 200), 20)
        await b.wait_for(lambda: all(b.final("kill", f"k{i}") for i in range(n)), 60)
        seqs = sequences_once(b)
        for i in range(n):
            got = seqs[("kill", f"k{i}")]
            assert got == list(range(1, len(got) + 1)), f"k{i}: a gap in {got}"
        seen = await scripted_ledger(b, app, Channel.VOICE)
        assert seen.compared == n and seen.wire == seen.attempts
        assert app.store.is_open


async def _is(status: Any, expected: int) -> bool:
    return bool(await status == expected)


async def test_telgate_migrate_applies_once_from_the_command_line(url: str, tmp_path: Path) -> None:
    """`telgate migrate` (SPEC §1): the migrations without the service, then nothing the second time."""
    cfg = tmp_path / "telgate.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{tmp_path}"\n[store]\nurl = "{url}"\n')
    telgate = Path(sys.executable).with_name("telgate")
    runs = [
        await asyncio.to_thread(
            subprocess.run, [str(telgate), "migrate", "--config", str(cfg)], capture_output=True, text=True
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs
    assert "migrations applied" in runs[0].stdout and str(VERSIONS) in runs[0].stdout
    assert "up to date" in runs[1].stdout


async def test_contact_gauges_report_the_stores_totals_whoever_made_the_transitions(
    broker: Mosquitto, tmp_path: Path, url: str
) -> None:
    """SPEC §11: /metrics of every instance shows the contacts per status the store holds, not only the
    transitions it made itself. Another writer (another instance's engine on the same store) creates
    contacts the gateway never saw; within `metrics.contacts_refresh_s` its gauge counts them too."""
    settings = settings_for(broker.url, tmp_path, store={"url": url}, metrics={"contacts_refresh_s": 0.5})
    async with backend(broker.url) as b, gateway(settings, delay_s=0.05) as app:
        await dial_all(b, 4, "mine")
        await b.wait_for(lambda: sum(b.final("mine", f"k{i}") for i in range(4)) == 4, 20)
        seen = await scripted_ledger(b, app, Channel.VOICE)
        assert seen.compared == 4 and seen.wire == seen.attempts
        other = open_store(url)  # another instance, deciding on the same store
        await other.open()
        try:
            engine = Engine(other, "gw-other", Topics("telgate"), Recorder("other"))
            task = asyncio.create_task(engine.run())
            try:
                # a draft campaign: its contacts wait in `initial` (this gateway's dispatcher, which the
                # other instance's commit wakes, would otherwise dial them from the shared queue)
                await engine.execute(lambda u: u.create_campaign("theirs"))
                for i in range(3):
                    state = ContactState(campaign_id="theirs", contact_id=f"t{i}", channel=Channel.VOICE)
                    key = ("theirs", f"t{i}")
                    sig = Signal(Kind.CREATE, phone=f"+42060200000{i}")
                    await engine.execute(lambda u, k=key, s=state, g=sig: u.apply(k, g, create=s))
            finally:
                task.cancel()
        finally:
            await other.close()

        async def totals() -> dict[str, float]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{app.admin_port}/metrics") as r,
            ):
                text = await r.text()
            out: dict[str, float] = defaultdict(float)
            for line in text.splitlines():
                if line.startswith("telgate_contacts{"):
                    labels, value = line.rsplit(" ", 1)
                    out[labels.split('status="', 1)[1].split('"', 1)[0]] += float(value)
            return out

        async def counts_theirs() -> bool:
            now = await totals()
            return now.get("initial", 0) == 3 and sum(now.values()) == 7

        await poll("the gauges to count the other instance's contacts", counts_theirs, 20)
        stored = await app.store.read(lambda t: t.all_counts())
        assert sum(n for *_, n in stored) == 7
