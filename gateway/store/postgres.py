"""PostgreSQL store (psycopg 3): the SQLite store's contract on a server that several instances can reach.

Like the SQLite store, one connection is owned by one thread and every `run` is one transaction on it:
this instance's transactions commit one after another, in the order they ran. Several instances'
transactions overlap, so outbox ids need not commit in id order (`shared`: the publisher keeps no
cursor; docs/cluster.md says how the partitions, leases and claims work and why order still holds).

Round trips, not rows, are the cost (bench/store.py). A write whose answer the caller does not need
(events, outbox rows, queue places, timers, commands, wamids, blacklist) is queued and sent with the
other writes to its table as one `executemany` (one round trip, psycopg pipelines it) when a read needs
that table or at commit. `put_contact` stays a compare-and-set on `sequence`: when this transaction
itself read or wrote the contact at `expected_sequence`, the write is queued with its `WHERE sequence`
and its row count checked when it is sent (a miss — another instance moved the contact in between —
raises Conflict, and the engine decides the batch again); otherwise it runs at once and returns False
when the stored sequence moved.

Connection loss: the transaction is rolled back with the connection and `run` reconnects with backoff
(jittered, 50 ms doubling to 2 s) and runs `fn` again on fresh state, as the engine does after a
Conflict; `is_open` is False meanwhile (/readyz 503). When the connection broke during COMMIT, the
outcome is read from the transaction's commit mark: every transaction that wrote also sets this store's
row in `commit_marks` to a fresh token, in the same transaction. After reconnecting, the row is read
`FOR SHARE` (which waits for a COMMIT still under way on the old connection): our token means the first
result stands (never decided twice), any other means `fn` runs again (never lost).

Not `pg_xact_status(xid)`: a server that crashes loses the WAL of transactions that had not committed,
and after recovery it hands their transaction ids out again. Another of our own transactions (the
outbox publisher's delete, a timer) could then commit under the lost transaction's id before the
verdict was asked, and the lost batch was taken for committed: its dials went out, its writes were gone,
and the same contacts were dialled again for the same attempt (test_postgres_killed_and_restarted_mid_run).
After `outage_s` without the server, `run` raises StoreError.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast

import psycopg

from ..domain.effects import TimerKind
from ..domain.state import CampaignState, ContactState
from ..domain.statuses import Channel
from . import (
    FINAL_STATUSES,
    PARTS,
    Conflict,
    DeadLetter,
    Key,
    Lease,
    OutboxRow,
    StoreError,
    Timer,
    Txn,
    contact_partition,
    count_in_cache,
    partition,
)
from .migrate import Migration, pending

log = logging.getLogger("telgate.store")
R = TypeVar("R")
MIGRATION_LOCK = 0x74656C67  # pg_advisory_xact_lock key: one instance migrates at a time
DISPATCH_LOCK = 0x74656C68  # pg_advisory_xact_lock(DISPATCH_LOCK, channel's): one dispatch turn at a time
NOTIFY_CHANNEL = "telgate"

MIGRATIONS = (
    Migration(
        1,
        "contacts, messages (events + outbox), campaigns, timers, blacklist, commands, wamids",
        (
            """CREATE TABLE contacts (
                campaign_id text NOT NULL,
                contact_id text NOT NULL,
                channel text NOT NULL,
                status text NOT NULL,
                sequence integer NOT NULL,
                in_flight boolean NOT NULL DEFAULT false,
                owner text,
                ready_at timestamptz,
                priority integer NOT NULL DEFAULT 1,
                state text NOT NULL,
                PRIMARY KEY (campaign_id, contact_id)
            )""",
            # the dispatch queue in its order, ties broken as SQLite's index breaks them (by key)
            "CREATE INDEX contacts_ready ON contacts (channel, priority, ready_at, campaign_id, contact_id)"
            " WHERE ready_at IS NOT NULL",
            "CREATE INDEX contacts_in_flight ON contacts (owner) WHERE in_flight",
            """CREATE TABLE messages (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                topic text NOT NULL,
                payload bytea NOT NULL,
                retain boolean NOT NULL DEFAULT false,
                correlation bytea,
                created_at timestamptz NOT NULL DEFAULT now(),
                pending boolean NOT NULL,
                campaign_id text,
                contact_id text
            )""",
            "CREATE INDEX messages_pending ON messages (id) WHERE pending",
            "CREATE INDEX messages_contact ON messages (campaign_id, contact_id, id) WHERE contact_id IS NOT NULL",
            """CREATE TABLE campaigns (
                campaign_id text PRIMARY KEY,
                state jsonb NOT NULL,
                status text NOT NULL,
                dialed_contacts integer NOT NULL DEFAULT 0,
                talk_seconds double precision NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE timers (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                kind text NOT NULL,
                campaign_id text NOT NULL,
                contact_id text,
                due_at timestamptz NOT NULL
            )""",
            "CREATE INDEX timers_due ON timers (due_at, id)",
            "CREATE INDEX timers_contact ON timers (campaign_id, contact_id)",
            "CREATE TABLE blacklist (phone text PRIMARY KEY)",
            "CREATE TABLE commands (command_id text PRIMARY KEY, result bytea NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE wamids (wamid text PRIMARY KEY, campaign_id text NOT NULL, contact_id text NOT NULL)",
        ),
    ),
    Migration(
        2,
        "retention: wamids get a created_at (existing ones count from the upgrade), indexes to prune by age",
        (
            "ALTER TABLE wamids ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()",
            "CREATE INDEX messages_history ON messages (created_at) WHERE NOT pending",
            "CREATE INDEX commands_created ON commands (created_at)",
            "CREATE INDEX wamids_created ON wamids (created_at)",
        ),
    ),
    Migration(
        3,
        "commit marks: the outcome of a COMMIT whose answer was lost, one row per store connection",
        (
            "CREATE TABLE commit_marks (owner text PRIMARY KEY, token bigint NOT NULL,"
            " at timestamptz NOT NULL DEFAULT now())",
        ),
    ),
    Migration(
        4,
        "several instances: members and their leases, outbox partitions leased to one member at a time",
        (
            # rows pending at the upgrade stay in partition 0 (docs/cluster.md)
            "ALTER TABLE messages ADD COLUMN part smallint NOT NULL DEFAULT 0",
            "CREATE INDEX messages_pending_part ON messages (part, id) WHERE pending",
            "ALTER TABLE contacts ADD COLUMN version bigint NOT NULL DEFAULT 0",
            """CREATE TABLE members (
                gateway_id text PRIMARY KEY,
                epoch bigint NOT NULL,
                bus_client text NOT NULL DEFAULT '',
                joined_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL
            )""",
            "CREATE TABLE partitions (part integer PRIMARY KEY, owner text, expires_at timestamptz)",
            f"INSERT INTO partitions (part) SELECT generate_series(0, {PARTS - 1})",
            # outbox ids must be handed out in time order across sessions (docs/cluster.md): no cache
            "ALTER TABLE messages ALTER COLUMN id SET CACHE 1",
        ),
    ),
    Migration(
        5,
        "dead letters: outbox rows that can never be published, moved aside with the reason",
        (
            # `id` is the outbox row's (an identity: never handed out twice)
            """CREATE TABLE dead_letters (
                id bigint PRIMARY KEY,
                topic text NOT NULL,
                payload bytea NOT NULL,
                retain boolean NOT NULL DEFAULT false,
                correlation bytea,
                part smallint NOT NULL DEFAULT 0,
                reason text NOT NULL,
                created_at timestamptz NOT NULL,
                dead_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX dead_letters_at ON dead_letters (dead_at)",
        ),
    ),
    Migration(
        6,
        "WhatsApp inbound: message ids seen (dedup), marketing opt-outs, template states; contacts by number",
        (
            "CREATE TABLE inbound_messages"
            " (wamid text PRIMARY KEY, phone_number_id text NOT NULL, received_at timestamptz NOT NULL)",
            "CREATE INDEX inbound_messages_received ON inbound_messages (received_at)",
            "CREATE TABLE marketing_opt_outs (phone text PRIMARY KEY, since timestamptz NOT NULL)",
            """CREATE TABLE template_states (
                name text NOT NULL,
                language text NOT NULL,
                status text NOT NULL,
                reason text,
                updated_at timestamptz NOT NULL,
                PRIMARY KEY (name, language)
            )""",
            # a contact's number and creation time as columns (written at its INSERT; neither changes
            # after it), for `latest_contact_by_phone`; existing contacts take them from their state
            "ALTER TABLE contacts ADD COLUMN phone text, ADD COLUMN created_at timestamptz",
            "UPDATE contacts SET phone = state::jsonb ->> 'phone',"
            " created_at = (state::jsonb ->> 'created_at')::timestamptz WHERE state::jsonb ->> 'phone' IS NOT NULL",
            # in the read's order (SQLite's NULLs sort last when descending; here they would come first)
            "CREATE INDEX contacts_phone ON contacts"
            " (channel, phone, created_at DESC NULLS LAST, campaign_id DESC, contact_id DESC) WHERE phone IS NOT NULL",
        ),
    ),
)
# out of the outbox and into the dead letters in one statement: a row no longer pending (published, or
# moved by a statement that committed first) is neither moved nor counted
DEAD_LETTER = (
    "WITH moving AS (SELECT * FROM unnest(%s::bigint[], %s::text[]) AS m (id, reason)),"
    " moved AS (UPDATE messages SET pending = false FROM moving WHERE messages.id = moving.id AND messages.pending"
    " RETURNING messages.id, topic, payload, retain, correlation, part, created_at, moving.reason)"
    " INSERT INTO dead_letters (id, topic, payload, retain, correlation, part, reason, created_at)"
    " SELECT id, topic, payload, retain, correlation, part, reason, created_at FROM moved"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
)

INSERT_CONTACT = (
    "INSERT INTO contacts (campaign_id, contact_id, channel, status, sequence, in_flight, owner, state, ready_at,"
    " priority, phone, created_at) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING"
)
# the queue place rides along when the same decision moves it (`set_ready` right after `put_contact`): one
# row version and one statement instead of two (READY_KEPT: it stays as it is)
UPDATE_CONTACT = (
    "UPDATE contacts SET status=%s, sequence=%s, in_flight=%s, owner=COALESCE(%s, owner), state=%s,"
    " version = version + 1, ready_at = CASE WHEN %s THEN %s::timestamptz ELSE ready_at END,"
    " priority = CASE WHEN %s THEN %s::integer ELSE priority END"
    " WHERE campaign_id=%s AND contact_id=%s AND sequence=%s"
)
READY_KEPT = (False, None, False, None)
READY_AT = 5  # where the four queue-place values start in an UPDATE_CONTACT row
IN_FLIGHT_COUNTS = "SELECT campaign_id, COUNT(*) FROM contacts WHERE in_flight AND channel=%s GROUP BY campaign_id"
# a write that keeps the sequence (a wamid noted, a flag set) changes the state all the same: the
# compare-and-set is on the row's version too, or two instances' writes at one sequence would both pass
UPDATE_CONTACT_VERSIONED = UPDATE_CONTACT + " AND version=%s"
INSERT_MESSAGE = (
    "INSERT INTO messages (topic, payload, retain, correlation, pending, campaign_id, contact_id, part)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
)
# a transaction's counts for one campaign add up in one row while nothing else of the campaign's was
# queued after it: one UPDATE per campaign and batch, not one per dialled contact and per ended call
BUMP = (
    "UPDATE campaigns SET dialed_contacts = dialed_contacts + %s, talk_seconds = talk_seconds + %s"
    " WHERE campaign_id = %s"
)
INSERT_CAMPAIGN = "INSERT INTO campaigns (campaign_id, state, status) VALUES (%s, %s::jsonb, %s) ON CONFLICT DO NOTHING"
UPSERT_CAMPAIGN = (
    "INSERT INTO campaigns (campaign_id, state, status) VALUES (%s, %s::jsonb, %s) ON CONFLICT (campaign_id)"
    " DO UPDATE SET state=excluded.state, status=excluded.status"
)
# statements a big group of is sent as one binary COPY instead (a fifth of psycopg's work per row); COPY
# cannot join a pipeline, so it costs a round trip of its own and small groups stay statements
COPY_FORMS = {
    INSERT_MESSAGE: (
        "COPY messages (topic, payload, retain, correlation, pending, campaign_id, contact_id, part)"
        " FROM STDIN (FORMAT BINARY)",
        ("text", "bytea", "bool", "bytea", "bool", "text", "text", "int2"),
    ),
}
COPY_AT = 32  # rows
# each row must change exactly one row
CAS = frozenset({INSERT_CONTACT, UPDATE_CONTACT, UPDATE_CONTACT_VERSIONED, INSERT_CAMPAIGN})
# written last, and only by a transaction that wrote something (one that only read needs no verdict);
# an INSERT of no row assigns no transaction id, so a read-only transaction stays read-only
MARK = (
    "INSERT INTO commit_marks (owner, token, at) SELECT %s, %s, now() WHERE pg_current_xact_id_if_assigned()"
    " IS NOT NULL ON CONFLICT (owner) DO UPDATE SET token = excluded.token, at = excluded.at"
)
VERDICT = "SELECT token FROM commit_marks WHERE owner = %s FOR SHARE"


class _Lost(Exception):
    """The connection broke. Nothing of the transaction is committed, unless `token` is set: then COMMIT
    was under way, and whether `commit_marks` holds `token` says whether `result` stands."""

    def __init__(self, detail: str, token: int | None = None, result: Any = None) -> None:
        super().__init__(detail)
        self.token = token
        self.result = result


@dataclass
class _Group:
    """Queued rows of one statement, sent as one executemany."""

    sql: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    keys: set[Hashable] = field(default_factory=set)


class _PgTxn:
    def __init__(self, conn: psycopg.Connection[Any], read_only: bool = False) -> None:
        self.conn = conn
        self.read_only = read_only
        self.cur = conn.cursor()
        self._queued: dict[str, list[_Group]] = {}  # table -> groups, sent in order
        self._known: dict[Key, ContactState | None] = {}  # contacts as this transaction read or wrote them
        # contacts whose latest write is a queued UPDATE_CONTACT: its group and row (set_ready rides along)
        self._updates: dict[Key, tuple[_Group, int]] = {}
        self._counted_in_flight: tuple[Channel, dict[str, int]] | None = None  # by lock_dispatch, for the turn
        self._versions: dict[Key, int] = {}  # their row versions (compare-and-set)
        # what the other instances are woken for once this commits: rows to publish, contacts ready
        self._wakes: set[str] = set()
        self._campaigns: dict[str, CampaignState | None] = {}  # read once per transaction (one per batch)
        self._commands: dict[str, bytes | None] = {}  # command ids read (prefetched) or written here
        self._blacklisted: dict[str, bool] = {}  # numbers looked up (prefetched) or changed here
        self._opted_out: dict[str, bool] = {}  # marketing opt-outs looked up or changed here
        self._inbound: set[str] = set()  # inbound wamids noted here (a second one is a duplicate)

    def prefetch(
        self, contacts: Collection[Key] = (), commands: Collection[str] = (), phones: Collection[str] = ()
    ) -> None:
        """One query per kind for what is not known yet (see Reads.prefetch), all of them in one round
        trip with the queued writes they must see."""
        queries: list[tuple[str, str, tuple[Any, ...], Callable[[list[tuple[Any, ...]]], None]]] = []
        keys = [k for k in dict.fromkeys(contacts) if k not in self._known]
        if keys:
            self._known.update(dict.fromkeys(keys))
            queries.append(
                (
                    "contacts",
                    "SELECT state, version FROM contacts WHERE (campaign_id, contact_id) IN"
                    " (SELECT * FROM unnest(%s::text[], %s::text[]))",
                    ([k[0] for k in keys], [k[1] for k in keys]),
                    self._read_contacts,
                )
            )
        ids = [c for c in dict.fromkeys(commands) if c not in self._commands]
        if ids:
            self._commands.update(dict.fromkeys(ids))
            queries.append(
                (
                    "commands",
                    "SELECT command_id, result FROM commands WHERE command_id = ANY(%s)",
                    (ids,),
                    lambda rows: self._commands.update((r[0], bytes(r[1])) for r in rows),
                )
            )
        numbers = [p for p in dict.fromkeys(phones) if p and p not in self._blacklisted]
        if numbers:
            self._blacklisted.update(dict.fromkeys(numbers, False))
            queries.append(
                (
                    "blacklist",
                    "SELECT phone FROM blacklist WHERE phone = ANY(%s)",
                    (numbers,),
                    lambda rows: self._blacklisted.update((r[0], True) for r in rows),
                )
            )
        if queries:
            cursors = self._send([q[0] for q in queries], [(q[1], q[2]) for q in queries])
            for cur, (*_, handle) in zip(cursors, queries, strict=True):
                handle(cur.fetchall())

    def _read_contacts(self, rows: list[tuple[Any, ...]]) -> None:
        for blob, version in rows:
            state = ContactState.model_validate_json(blob)
            self._known[(state.campaign_id, state.contact_id)] = state
            self._versions[(state.campaign_id, state.contact_id)] = version

    # -- the write queue ------------------------------------------------------------------------
    def _queue(self, table: str, sql: str, row: tuple[Any, ...], key: Hashable) -> _Group:
        """Queue a row. It joins the latest group of the same statement unless a later group touches
        the same key (then order matters, and it starts a group of its own at the end)."""
        if table == "contacts":
            self._updates.pop(cast(Key, key), None)  # a later write to the contact: nothing rides along
            self._counted_in_flight = None
        groups = self._queued.setdefault(table, [])
        target: _Group | None = None
        for group in reversed(groups):
            if group.sql == sql:
                target = group
                break
            if key in group.keys:
                break
        if target is None:
            target = _Group(sql)
            groups.append(target)
        target.rows.append(row)
        target.keys.add(key)
        return target

    def _take(self, tables: Collection[str]) -> list[_Group]:
        """The groups queued for `tables`, in order; a big one with a COPY form is sent now (only the first
        of its table: a later group may touch what it writes)."""
        groups = []
        for table in tables:
            queued = self._queued.pop(table, [])
            if queued and len(queued[0].rows) >= COPY_AT and queued[0].sql in COPY_FORMS:
                copy_sql, types = COPY_FORMS[queued[0].sql]
                with self.cur.copy(copy_sql) as copy:
                    copy.set_types(types)
                    for row in queued.pop(0).rows:
                        copy.write_row(row)
            groups += queued
        return groups

    def _flush(self, *tables: str) -> None:
        """Send what is queued for `tables` (every table when none is named)."""
        self._send(tables or tuple(self._queued))

    def _send(
        self, tables: Collection[str], statements: Sequence[tuple[str, tuple[Any, ...]]] = ()
    ) -> list[psycopg.Cursor[Any]]:
        """The writes queued for `tables`, then `statements`, in one round trip (a pipeline, each on a
        cursor of its own), the compare-and-set groups' row counts checked after it; the statements'
        cursors, their results read."""
        groups = self._take(tables)
        if len(groups) + len(statements) <= 1:  # one statement: no pipeline to set up
            checks = self._execute(groups, self.cur)
            cursors = [self.cur.execute(sql, args) for sql, args in statements]
        else:
            cursors = [self.conn.cursor() for _ in statements]
            with self.conn.pipeline():
                checks = self._execute(groups)
                for cur, (sql, args) in zip(cursors, statements, strict=True):
                    cur.execute(sql, args)
        _check(checks)
        return cursors

    def _execute(self, groups: list[_Group], cur: psycopg.Cursor[Any] | None = None) -> list[tuple[Any, int]]:
        """Execute `groups` in order, on `cur` or (in a pipeline) each on a cursor of its own, which keeps
        its row count until the pipeline's sync; returns the compare-and-set ones' cursors and counts."""
        checks = []
        for group in groups:
            c = cur or self.conn.cursor()
            if len(group.rows) == 1:
                c.execute(group.sql, group.rows[0])
            else:
                c.executemany(group.sql, group.rows)
            if group.sql in CAS:
                checks.append((c, len(group.rows)))
        return checks

    def finish(self, owner: str) -> int | None:
        """Before COMMIT: send the rest, and when the transaction wrote anything, its commit mark (the
        token it returns). One round trip: the wake-ups, the queued groups and the mark in one pipeline;
        the compare-and-set counts are checked before the caller's COMMIT."""
        token = secrets.randbits(63)
        # the wake-ups are delivered at COMMIT, and only if it commits
        wakes = [("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, json.dumps({"wake": w}))) for w in sorted(self._wakes)]
        mark = self._send(tuple(self._queued), [*wakes, (MARK, (owner, token))])[-1]
        return token if mark.rowcount == 1 else None

    def _one(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        return self.cur.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        return self.cur.execute(sql, args).fetchall()

    # -- contacts -------------------------------------------------------------------------------
    def get_contact(self, key: Key) -> ContactState | None:
        if key in self._known:
            return self._known[key]
        row = self._one("SELECT state, version FROM contacts WHERE campaign_id=%s AND contact_id=%s", key)
        state = None if row is None else ContactState.model_validate_json(row[0])
        self._known[key] = state
        if row is not None:
            self._versions[key] = row[1]
        return state

    def put_contact(
        self, state: ContactState, expected_sequence: int, owner: str | None, ready: tuple[datetime, int] | None = None
    ) -> bool:
        key = (state.campaign_id, state.contact_id)
        blob = state.model_dump_json(exclude_defaults=True)
        if expected_sequence == 0:
            sql = INSERT_CONTACT
            row: tuple[Any, ...] = (
                *key,
                state.channel,
                state.status,
                state.sequence,
                state.in_flight,
                owner,
                blob,
                None if ready is None else ready[0],
                1 if ready is None else ready[1],
                state.phone,
                state.created_at,
            )
            if ready is not None:
                self._wakes.add("ready")
        else:
            sql = UPDATE_CONTACT
            row = (state.status, state.sequence, state.in_flight, owner, blob, *READY_KEPT, *key, expected_sequence)
        if key in self._known:
            known = self._known[key]
            if (0 if known is None else known.sequence) == expected_sequence:
                version = self._versions.get(key)
                if sql is UPDATE_CONTACT and version is not None:  # the row as this transaction read it
                    sql, row = UPDATE_CONTACT_VERSIONED, (*row, version)
                group = self._queue("contacts", sql, row, key)  # its WHERE is checked when it is sent
                if sql is not INSERT_CONTACT:  # (the group it joined need not be the last one)
                    self._updates[key] = (group, len(group.rows) - 1)
                self._known[key] = state
                if sql is INSERT_CONTACT:
                    self._versions[key] = 0
                elif version is not None:
                    self._versions[key] = version + 1
                return True
        self._flush("contacts")
        self._counted_in_flight = None
        self.cur.execute(sql, row)
        self._versions.pop(key, None)
        if self.cur.rowcount != 1:
            self._known.pop(key, None)
            return False
        self._known[key] = state
        return True

    def set_ready(self, key: Key, ready_at: datetime | None, priority: int = 1) -> None:
        if ready_at is not None:
            self._wakes.add("ready")
        update = self._updates.pop(key, None)
        if update is not None and any(g is update[0] for g in self._queued.get("contacts", ())):
            group, index = update  # this contact's UPDATE is still queued, and is its latest write: ride along
            row = group.rows[index]
            group.rows[index] = (*row[:READY_AT], True, ready_at, True, priority, *row[READY_AT + 4 :])
            return
        self._queue(
            "contacts",
            "UPDATE contacts SET ready_at=%s, priority=%s WHERE campaign_id=%s AND contact_id=%s",
            (ready_at, priority, *key),
            key,
        )

    def ready_contacts(self, channel: Channel, now: datetime, limit: int, skip: frozenset[str]) -> list[Key]:
        self._flush("contacts", "campaigns")
        rows = self._all(
            "SELECT c.campaign_id, c.contact_id FROM contacts c JOIN campaigns g ON g.campaign_id = c.campaign_id"
            " WHERE c.channel=%s AND c.ready_at IS NOT NULL AND c.ready_at <= %s AND g.status='in_progress'"
            " AND c.campaign_id <> ALL(%s) ORDER BY c.priority, c.ready_at, c.campaign_id, c.contact_id LIMIT %s"
            # claiming: a contact another instance's turn is starting is skipped, not waited for
            + ("" if self.read_only else " FOR UPDATE OF c SKIP LOCKED"),
            (channel, now, sorted(skip), limit),
        )
        return [(r[0], r[1]) for r in rows]

    def next_ready_at(self, channel: Channel, skip: frozenset[str]) -> datetime | None:
        self._flush("contacts", "campaigns")
        row = self._one(
            "SELECT MIN(c.ready_at) FROM contacts c JOIN campaigns g ON g.campaign_id = c.campaign_id"
            " WHERE c.channel=%s AND c.ready_at IS NOT NULL AND g.status='in_progress'"
            " AND c.campaign_id <> ALL(%s)",
            (channel, sorted(skip)),
        )
        return None if row is None else cast(datetime | None, row[0])

    def latest_contact_by_phone(self, channel: str, phone: str) -> Key | None:
        self._flush("contacts", "campaigns")
        row = self._one(
            "SELECT c.campaign_id, c.contact_id FROM contacts c JOIN campaigns g ON g.campaign_id = c.campaign_id"
            " WHERE c.channel=%s AND c.phone=%s AND g.status='in_progress'"
            " ORDER BY c.created_at DESC NULLS LAST, c.campaign_id DESC, c.contact_id DESC LIMIT 1",
            (channel, phone),
        )
        return None if row is None else (row[0], row[1])

    def in_flight_contacts(self, owner: str) -> list[Key]:
        self._flush("contacts")
        rows = self._all(
            "SELECT campaign_id, contact_id FROM contacts WHERE in_flight AND (owner=%s OR owner IS NULL)", (owner,)
        )
        return [(r[0], r[1]) for r in rows]

    def unfinished_contacts(self, campaign_id: str) -> list[Key]:
        self._flush("contacts")
        rows = self._all(
            "SELECT campaign_id, contact_id FROM contacts WHERE campaign_id=%s AND status <> ALL(%s)",
            (campaign_id, list(FINAL_STATUSES)),
        )
        return [(r[0], r[1]) for r in rows]

    def campaigns_with_channel(self, channel: Channel, status: str) -> list[str]:
        self._flush("contacts", "campaigns")
        rows = self._all(
            "SELECT g.campaign_id FROM campaigns g WHERE g.status = %s AND EXISTS"
            " (SELECT 1 FROM contacts c WHERE c.campaign_id = g.campaign_id AND c.channel = %s)",
            (status, channel),
        )
        return [r[0] for r in rows]

    def counts(self, campaign_id: str) -> dict[str, int]:
        self._flush("contacts")
        rows = self._all("SELECT status, COUNT(*) FROM contacts WHERE campaign_id=%s GROUP BY status", (campaign_id,))
        return {r[0]: r[1] for r in rows}

    def all_counts(self) -> list[tuple[str, str, str, int]]:
        self._flush("contacts")
        rows = self._all(
            "SELECT campaign_id, channel, status, COUNT(*) FROM contacts GROUP BY campaign_id, channel, status"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # -- events and outbox: one table, one statement (ids follow the calls) ----------------------
    def add_event(self, key: Key, topic: str, payload: bytes) -> None:
        self._wakes.add("outbox")
        self._queue("messages", INSERT_MESSAGE, (topic, payload, False, None, True, *key, contact_partition(key)), None)

    def record(self, key: Key, payload: bytes) -> None:
        self._queue("messages", INSERT_MESSAGE, ("", payload, False, None, False, *key, 0), None)

    def events(self, key: Key) -> list[bytes]:
        self._flush("messages")
        rows = self._all("SELECT payload FROM messages WHERE campaign_id=%s AND contact_id=%s ORDER BY id", key)
        return [bytes(r[0]) for r in rows]

    def add_outbox(
        self,
        topic: str,
        payload: bytes,
        retain: bool = False,
        correlation: bytes | None = None,
        part_key: str | None = None,
    ) -> None:
        row = (topic, payload, retain, correlation, True, None, None, partition(part_key or topic))
        self._wakes.add("outbox")
        self._queue("messages", INSERT_MESSAGE, row, None)

    def outbox_fetch(
        self, after_id: int, limit: int, parts: Collection[int] | None = None, skip: Collection[int] = ()
    ) -> list[OutboxRow]:
        self._flush("messages")
        # the rows on the wire are left out by the server: fetched again each time they were a quarter of
        # the reading thread's time during a burst (their payloads, sent and parsed for nothing)
        where = ["pending", "id > %s"]
        args: list[Any] = [after_id]
        if parts is not None:
            where.append("part = ANY(%s)")
            args.append(sorted(parts))
        if skip:
            where.append("id <> ALL(%s)")
            args.append(list(skip))
        rows = self._all(
            "SELECT id, topic, payload, retain, correlation, extract(epoch FROM created_at)::float8, part FROM messages"
            f" WHERE {' AND '.join(where)} ORDER BY id LIMIT %s",
            (*args, limit),
        )
        return [
            OutboxRow(r[0], r[1], bytes(r[2]), r[3], None if r[4] is None else bytes(r[4]), r[5], r[6]) for r in rows
        ]

    def outbox_delete(self, ids: list[int]) -> None:
        self._flush("messages")
        self.cur.execute("UPDATE messages SET pending = false WHERE id = ANY(%s) AND pending", (ids,))

    def outbox_dead_letter(self, moves: Collection[tuple[int, str]]) -> list[int]:
        self._flush("messages")
        by_id = dict(moves)
        if not by_id:
            return []
        return sorted(r[0] for r in self._all(DEAD_LETTER, (list(by_id), list(by_id.values()))))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = self._all(
            "SELECT id, topic, payload, retain, correlation, part, reason, extract(epoch FROM created_at)::float8,"
            " extract(epoch FROM dead_at)::float8 FROM dead_letters ORDER BY dead_at DESC, id DESC LIMIT %s",
            (limit,),
        )
        return [
            DeadLetter(r[0], r[1], bytes(r[2]), r[3], None if r[4] is None else bytes(r[4]), r[5], r[6], r[7], r[8])
            for r in rows
        ]

    def outbox_stats(self) -> tuple[int, float | None]:
        self._flush("messages")
        row = self._one("SELECT COUNT(*), extract(epoch FROM MIN(created_at))::float8 FROM messages WHERE pending")
        assert row is not None
        return int(row[0]), row[1]

    # -- timers ---------------------------------------------------------------------------------
    def add_timer(self, kind: TimerKind, campaign_id: str, contact_id: str | None, due_at: datetime) -> None:
        self._queue(
            "timers",
            "INSERT INTO timers (kind, campaign_id, contact_id, due_at) VALUES (%s,%s,%s,%s)",
            (kind, campaign_id, contact_id, due_at),
            (campaign_id, contact_id),
        )

    def cancel_timers(self, key: Key) -> None:
        self._queue("timers", "DELETE FROM timers WHERE campaign_id=%s AND contact_id=%s", key, key)

    def due_timers(self, now: datetime, limit: int) -> list[Timer]:
        self._flush("timers")
        rows = self._all(
            "SELECT id, kind, campaign_id, contact_id, due_at FROM timers WHERE due_at <= %s"
            " ORDER BY due_at, id LIMIT %s",
            (now, limit),
        )
        return [Timer(r[0], TimerKind(r[1]), r[2], r[3], r[4]) for r in rows]

    def delete_timer(self, timer_id: int) -> bool:
        self._flush("timers")
        return self.cur.execute("DELETE FROM timers WHERE id=%s", (timer_id,)).rowcount == 1

    def next_timer_at(self) -> datetime | None:
        self._flush("timers")
        row = self._one("SELECT MIN(due_at) FROM timers")
        return None if row is None else cast(datetime | None, row[0])

    def in_flight_counts(self, channel: Channel) -> dict[str, int]:
        counted, self._counted_in_flight = self._counted_in_flight, None
        if counted is not None and counted[0] == channel:
            return counted[1]  # counted with the dispatch lock, and no contact written since
        self._flush("contacts")
        return {r[0]: r[1] for r in self._all(IN_FLIGHT_COUNTS, (channel,))}

    # -- several instances ------------------------------------------------------------------------
    def lock_dispatch(self, channel: Channel) -> bool:
        # a try-lock: a batch holds row locks already when its turn comes, and waiting here for another
        # instance's turn that waits for one of those rows would be a deadlock. The turn asks for the
        # cluster's calls in flight next: they are counted in the same round trip, after the lock
        lock, counts = self._send(
            ("contacts",),
            [
                ("SELECT pg_try_advisory_xact_lock(%s, %s)", (DISPATCH_LOCK, partition(str(channel)))),
                (IN_FLIGHT_COUNTS, (channel,)),
            ],
        )
        row = lock.fetchone()
        self._counted_in_flight = (channel, {r[0]: r[1] for r in counts.fetchall()})
        return bool(row and row[0])

    def lock_campaign(self, campaign_id: str) -> CampaignState | None:
        self._campaigns.pop(campaign_id, None)
        return self.get_campaign(campaign_id, lock=True)

    def notify(self, payload: bytes) -> None:
        self._queue("notify", "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload.decode()), None)

    def lease_join(self, member: str, epoch: int, lease_s: float, bus_client: str = "") -> int | None:
        self._flush()
        row = self._one("SELECT epoch, expires_at > now() FROM members WHERE gateway_id=%s FOR UPDATE", (member,))
        if row is not None and row[1] and row[0] != epoch:
            return int(row[0])
        self.cur.execute(
            "INSERT INTO members (gateway_id, epoch, bus_client, expires_at)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT (gateway_id) DO UPDATE"
            " SET epoch = excluded.epoch, bus_client = excluded.bus_client, expires_at = excluded.expires_at,"
            " joined_at = now()",
            (member, epoch, bus_client, lease_s),
        )
        # a previous run of this id held partitions: free them (its rows are published by whoever takes them)
        self.cur.execute("UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s", (member,))
        return None

    def lease_renew(self, member: str, epoch: int, lease_s: float, release: Collection[int]) -> Lease:
        self._flush()
        renewed = self.cur.execute(
            "UPDATE members SET expires_at = now() + make_interval(secs => %s) WHERE gateway_id=%s AND epoch=%s",
            (lease_s, member, epoch),
        ).rowcount
        if renewed != 1:
            return Lease(held=False)
        if release:
            self.cur.execute(
                "UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s AND part = ANY(%s)",
                (member, sorted(release)),
            )
        mine = {
            r[0]
            for r in self._all(
                "UPDATE partitions SET expires_at = now() + make_interval(secs => %s) WHERE owner = %s RETURNING part",
                (lease_s, member),
            )
        }
        rows = self._all("SELECT gateway_id, expires_at > now() FROM members ORDER BY gateway_id")
        live = tuple(r[0] for r in rows if r[1])
        dead = tuple(r[0] for r in rows if not r[1])
        fair = math.ceil(PARTS / max(1, len(live)))
        if len(mine) < fair:
            mine |= {
                r[0]
                for r in self._all(
                    "UPDATE partitions SET owner = %s, expires_at = now() + make_interval(secs => %s)"
                    " WHERE part IN (SELECT part FROM partitions WHERE (owner IS NULL OR expires_at <= now())"
                    " AND part <> ALL(%s) ORDER BY part LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING part",
                    (member, lease_s, sorted(release), fair - len(mine)),
                )
            }
        return Lease(held=True, members=live, parts=frozenset(mine), dead=dead)

    def lease_bury(self, member: str) -> str | None:
        self._flush()
        row = self._one(
            "DELETE FROM members WHERE gateway_id=%s AND expires_at <= now() RETURNING bus_client", (member,)
        )
        if row is None:
            return None
        self.cur.execute("UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s", (member,))
        return str(row[0])

    def lease_leave(self, member: str, epoch: int) -> None:
        self._flush()
        if self.cur.execute("DELETE FROM members WHERE gateway_id=%s AND epoch=%s", (member, epoch)).rowcount:
            self.cur.execute("UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s", (member,))

    # -- campaigns ------------------------------------------------------------------------------
    def get_campaign(self, campaign_id: str, lock: bool = False) -> CampaignState | None:
        if campaign_id in self._campaigns:
            return self._campaigns[campaign_id]
        self._flush("campaigns")
        row = self._one(
            "SELECT state::text, dialed_contacts, talk_seconds FROM campaigns WHERE campaign_id=%s"
            + (" FOR UPDATE" if lock else ""),
            (campaign_id,),
        )
        state = None
        if row is not None:
            state = CampaignState.model_validate_json(row[0]).model_copy(
                update={"dialed_contacts": row[1], "talk_seconds": row[2]}
            )
        self._campaigns[campaign_id] = state
        return state

    def put_campaign(self, state: CampaignState, created: bool = False) -> None:
        """Status and settings; the counters are only ever moved by `bump_campaign`. A creation is an
        INSERT that must insert (CAS: another instance's creation meanwhile is a Conflict)."""
        self._campaigns.pop(state.campaign_id, None)
        self._wakes.add("ready")  # a campaign started or resumed: its queue is ready for every instance
        blob = state.model_dump_json(exclude={"dialed_contacts", "talk_seconds"})
        self._queue(
            "campaigns",
            INSERT_CAMPAIGN if created else UPSERT_CAMPAIGN,
            (state.campaign_id, blob, state.status),
            state.campaign_id,
        )

    def count_dialed(self, campaign_id: str, n: int = 1) -> None:
        """Queued with the batch's writes (one round trip for all of them) instead of an UPDATE … RETURNING
        each: in bench/pipeline a dialled contact's round trip was a sixth of the store thread's time."""
        count_in_cache(self._campaigns, campaign_id, "dialed_contacts", n)
        self._bump(campaign_id, n, 0.0)

    def count_talk(self, campaign_id: str, seconds: float) -> None:
        """Queued like `count_dialed`: an ended call's UPDATE … RETURNING was an eighth of the store thread."""
        count_in_cache(self._campaigns, campaign_id, "talk_seconds", seconds)
        self._bump(campaign_id, 0, seconds)

    def _bump(self, campaign_id: str, dialed: int, talk_s: float) -> None:
        groups = self._queued.get("campaigns")
        if groups and groups[-1].sql is BUMP:  # the campaigns' latest group: add to this campaign's row
            rows = groups[-1].rows
            for index in range(len(rows) - 1, -1, -1):
                if rows[index][2] == campaign_id:
                    rows[index] = (rows[index][0] + dialed, rows[index][1] + talk_s, campaign_id)
                    return
        self._queue("campaigns", BUMP, (dialed, talk_s, campaign_id), campaign_id)

    def bump_campaign(self, campaign_id: str, dialed: int = 0, talk_s: float = 0.0) -> tuple[float, float | None]:
        """One UPDATE … RETURNING: the counters move atomically, whoever else bumps them."""
        self._campaigns.pop(campaign_id, None)
        self._flush("campaigns")
        row = self._one(
            "UPDATE campaigns SET dialed_contacts = dialed_contacts + %s, talk_seconds = talk_seconds + %s"
            " WHERE campaign_id = %s RETURNING talk_seconds, (state->'budget'->>'max_talk_minutes')::float8",
            (dialed, talk_s, campaign_id),
        )
        return (0.0, None) if row is None else (float(row[0]), row[1])

    # -- blacklist, commands, wamids ------------------------------------------------------------
    def is_blacklisted(self, phone: str) -> bool:
        if phone in self._blacklisted:
            return self._blacklisted[phone]
        self._flush("blacklist")
        found = self._one("SELECT 1 FROM blacklist WHERE phone=%s", (phone,)) is not None
        self._blacklisted[phone] = found
        return found

    def blacklist(self, phone: str, add: bool) -> None:
        sql = (
            "INSERT INTO blacklist (phone) VALUES (%s) ON CONFLICT DO NOTHING"
            if add
            else "DELETE FROM blacklist WHERE phone=%s"
        )
        self._queue("blacklist", sql, (phone,), phone)
        self._blacklisted[phone] = add

    def get_command(self, command_id: str) -> bytes | None:
        if command_id in self._commands:
            return self._commands[command_id]
        self._flush("commands")
        row = self._one("SELECT result FROM commands WHERE command_id=%s", (command_id,))
        result = None if row is None else bytes(row[0])
        self._commands[command_id] = result
        return result

    def put_command(self, command_id: str, result: bytes) -> None:
        self._commands[command_id] = result
        self._queue(
            "commands",
            "INSERT INTO commands (command_id, result) VALUES (%s,%s) ON CONFLICT (command_id)"
            " DO UPDATE SET result=excluded.result, created_at=excluded.created_at",
            (command_id, result),
            command_id,
        )

    def map_wamid(self, wamid: str, key: Key) -> None:
        self._queue(
            "wamids",
            "INSERT INTO wamids (wamid, campaign_id, contact_id) VALUES (%s,%s,%s) ON CONFLICT (wamid)"
            " DO UPDATE SET campaign_id=excluded.campaign_id, contact_id=excluded.contact_id,"
            " created_at=excluded.created_at",
            (wamid, *key),
            wamid,
        )

    def lookup_wamid(self, wamid: str) -> Key | None:
        self._flush("wamids")
        row = self._one("SELECT campaign_id, contact_id FROM wamids WHERE wamid=%s", (wamid,))
        return None if row is None else (row[0], row[1])

    # -- what customers and Meta send to the business's number -----------------------------------
    def note_inbound(self, wamid: str, phone_number_id: str, now: datetime) -> bool:
        """Its answer decides, so it is sent at once; another instance's INSERT of the same wamid waits
        for this transaction and then inserts nothing."""
        if wamid in self._inbound:
            return False
        self._inbound.add(wamid)
        self.cur.execute(
            "INSERT INTO inbound_messages (wamid, phone_number_id, received_at) VALUES (%s,%s,%s)"
            " ON CONFLICT DO NOTHING",
            (wamid, phone_number_id, now),
        )
        return self.cur.rowcount == 1

    def set_marketing_opt_out(self, phone: str, stop: bool, now: datetime) -> None:
        if stop:
            sql = "INSERT INTO marketing_opt_outs (phone, since) VALUES (%s,%s) ON CONFLICT DO NOTHING"
            row: tuple[Any, ...] = (phone, now)
        else:
            sql, row = "DELETE FROM marketing_opt_outs WHERE phone=%s", (phone,)
        self._queue("marketing_opt_outs", sql, row, phone)
        self._opted_out[phone] = stop

    def marketing_opted_out(self, phone: str) -> bool:
        if phone in self._opted_out:
            return self._opted_out[phone]
        self._flush("marketing_opt_outs")
        found = self._one("SELECT 1 FROM marketing_opt_outs WHERE phone=%s", (phone,)) is not None
        self._opted_out[phone] = found
        return found

    def set_template_state(self, name: str, language: str, status: str, reason: str | None, now: datetime) -> None:
        self._queue(
            "template_states",
            "INSERT INTO template_states (name, language, status, reason, updated_at) VALUES (%s,%s,%s,%s,%s)"
            " ON CONFLICT (name, language) DO UPDATE SET status=excluded.status, reason=excluded.reason,"
            " updated_at=excluded.updated_at",
            (name, language, status, reason, now),
            (name, language),
        )

    def template_state(self, name: str, language: str) -> tuple[str, str | None] | None:
        self._flush("template_states")
        row = self._one(
            "SELECT status, reason FROM template_states WHERE name=%s AND language IN (%s, '')"
            " ORDER BY language = '' LIMIT 1",  # the exact language first
            (name, language),
        )
        return None if row is None else (row[0], row[1])

    # -- retention ------------------------------------------------------------------------------
    def prune(self, older_than: datetime) -> dict[str, int]:
        self._flush()
        self._inbound.clear()  # what this transaction noted may be deleted now
        counts = {}
        for table, where in (
            ("messages", "NOT pending AND created_at"),
            ("commands", "created_at"),
            ("wamids", "created_at"),
            ("dead_letters", "dead_at"),
            ("inbound_messages", "received_at"),
        ):
            counts[table] = self.cur.execute(f"DELETE FROM {table} WHERE {where} < %s", (older_than,)).rowcount
        # the marks of store connections long gone (each process start is a new owner); not a count of
        # the contract: SQLite has none
        self.cur.execute("DELETE FROM commit_marks WHERE at < %s", (older_than,))
        return counts


def _check(checks: list[tuple[Any, int]]) -> None:
    """Each compare-and-set group changed one row per row sent, or another instance moved one of them."""
    for cur, expected in checks:
        if cur.rowcount != expected:
            raise Conflict(f"{expected - cur.rowcount} contact(s) moved under this transaction")


def _race(exc: BaseException) -> psycopg.Error | None:
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


class _Backoff:
    """The wait between tries while the server is away: jittered, 50 ms doubling to 2 s; StoreError once
    it has been away for `outage_s`."""

    def __init__(self, outage_s: float) -> None:
        self.outage_s = outage_s
        self.down_since: float | None = None
        self.delay = 0.05

    async def wait(self, lost: _Lost) -> None:
        now = time.monotonic()
        self.down_since = now if self.down_since is None else self.down_since
        if now - self.down_since >= self.outage_s:
            raise StoreError(f"PostgreSQL unreachable for {self.outage_s:.0f} s: {lost}") from lost
        await asyncio.sleep(self.delay * (0.5 + random.random()))
        self.delay = min(self.delay * 2, 2.0)


class PostgresStore:
    def __init__(self, url: str, outage_s: float = 120.0, connect_timeout_s: int = 5) -> None:
        self.url = url
        self.outage_s = outage_s
        self.connect_timeout_s = connect_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store")
        self._conn: psycopg.Connection[Any] | None = None
        # reads on a read-only connection and thread of their own, beside the writer's transactions
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store-read")
        self._reader: psycopg.Connection[Any] | None = None
        # the publisher's deletes of acknowledged rows, beside the writer (they decide nothing, and running
        # one again is harmless): a transaction of their own every 20 ms was a tenth of the writer's thread
        self._ack_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store-ack")
        self._acker: psycopg.Connection[Any] | None = None
        self._writer_pid = 0  # the writer connection's server process: its NOTIFYs are this instance's own
        self._migrated: list[int] = []
        self._closed = False
        self._lost_at: float | None = None
        self.owner = secrets.token_hex(8)  # this store's row in commit_marks

    @property
    def is_open(self) -> bool:
        conn = self._conn
        return not self._closed and conn is not None and not conn.closed and not conn.broken

    @property
    def migrated(self) -> list[int]:
        return list(self._migrated)

    @property
    def shared(self) -> bool:
        return True

    async def notifications(self) -> AsyncIterator[bytes]:
        """LISTEN on a connection of its own (autocommit, in the event loop), reconnected with backoff;
        a notification sent while it was away is lost, so what notifies must also be safe to miss
        (docs/cluster.md: a cancel that misses its call is caught by the call's owner at its next look)."""
        delay = 0.05
        while not self._closed:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=self.connect_timeout_s, application_name="telgate-listen"
                )
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    delay = 0.05
                    async for note in conn.notifies():
                        if note.pid == self._writer_pid:
                            # this instance's own commit: its engine woke its publisher and dispatcher
                            # already; taken again, each cost a fetch or a dispatch turn for nothing
                            continue
                        yield note.payload.encode()
            except psycopg.OperationalError as exc:
                log.warning("store notifications lost, listening again", extra={"detail": str(exc)})
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    # -- in the store thread ----------------------------------------------------------------------
    def _connect(self, read_only: bool = False) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, connect_timeout=self.connect_timeout_s, application_name="telgate")
        conn.execute("SET TIME ZONE 'UTC'")
        if read_only:  # one snapshot per read transaction, and no write through it
            conn.execute("SET default_transaction_read_only = on")
            conn.execute("SET default_transaction_isolation = 'repeatable read'")
        conn.commit()
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop("connection broken")
        try:
            conn = self._connect()
        except psycopg.OperationalError as exc:
            raise _Lost(f"cannot connect: {exc}") from exc
        self._conn = conn
        self._writer_pid = conn.info.backend_pid
        if self._lost_at is not None:
            log.warning("store reconnected", extra={"down_s": round(time.monotonic() - self._lost_at, 3)})
            self._lost_at = None
        return conn

    def _drop(self, why: str) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            if self._lost_at is None:
                self._lost_at = time.monotonic()
                log.warning("store connection lost", extra={"detail": why})

    def _open(self) -> None:
        conn = self._connect()
        try:
            self._migrated = self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._writer_pid = conn.info.backend_pid

    def _migrate(self, conn: psycopg.Connection[Any]) -> list[int]:
        """Each missing step in a transaction of its own, under an advisory lock (instances starting
        together apply each step once)."""
        applied: list[int] = []
        while True:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, what text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
                steps = pending(MIGRATIONS, row[0] if row else 0, "the PostgreSQL store")
                if steps:
                    for statement in steps[0].statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_version (version, what) VALUES (%s, %s)", (steps[0].version, steps[0].what)
                    )
            conn.commit()
            if not steps:
                return applied
            applied.append(steps[0].version)

    def _run(self, fn: Callable[[Txn], R]) -> R:
        conn = self._connection()
        try:
            txn = _PgTxn(conn)
            result = fn(txn)
            token = txn.finish(self.owner)
        except BaseException as exc:
            if conn.broken:  # whatever fn made of the failure, the cause is the connection
                self._drop(str(exc))
                raise _Lost(str(exc)) from exc
            try:
                conn.rollback()
            except psycopg.OperationalError as lost:
                self._drop(str(lost))
                raise _Lost(str(lost)) from exc
            race = _race(exc)
            if race is not None:  # the server chose this transaction to end a deadlock: decide again
                raise Conflict(f"{type(race).__name__}: {race}") from exc
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc
            raise
        try:
            conn.commit()
        except psycopg.Error as exc:
            if not conn.broken:
                raise StoreError(f"COMMIT failed: {exc}") from exc
            self._drop(str(exc))
            if token is None:  # it wrote nothing: what it read stands
                return result
            raise _Lost(str(exc), token, result) from exc
        return result

    def _verdict(self, token: int) -> str:
        """After a COMMIT whose answer was lost: 'committed', 'aborted' or 'in progress' (the old
        connection's backend still holds the mark's row after `lock_timeout`)."""
        conn = self._connection()
        try:
            conn.execute("SET LOCAL lock_timeout = '5s'")
            row = conn.execute(VERDICT, (self.owner,)).fetchone()
            conn.commit()
        except psycopg.errors.LockNotAvailable:
            conn.rollback()
            return "in progress"
        except psycopg.OperationalError as exc:
            if conn.broken:
                self._drop(str(exc))
                raise _Lost(str(exc)) from exc
            raise
        return "committed" if row is not None and row[0] == token else "aborted"

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _read(self, fn: Callable[[Txn], R]) -> R:
        """In the reading thread: `fn` in one read-only REPEATABLE READ transaction (one snapshot)."""
        conn = self._reader
        if conn is None or conn.closed or conn.broken:
            self._reader = None
            try:
                conn = self._reader = self._connect(read_only=True)
            except psycopg.OperationalError as exc:
                raise _Lost(f"cannot connect: {exc}") from exc
        try:
            txn = _PgTxn(conn, read_only=True)
            result = fn(txn)
            txn._flush()  # a write queued by mistake reaches the server and fails there, never dropped
            conn.commit()
        except BaseException as exc:
            if conn.broken:
                self._reader = None
                conn.close()
                raise _Lost(str(exc)) from exc
            conn.rollback()
            raise
        return result

    def _close_reader(self) -> None:
        conn, self._reader = self._reader, None
        if conn is not None:
            conn.close()

    def _published(self, ids: list[int]) -> None:
        """In the ack thread: one autocommitted UPDATE on a connection of its own (no commit mark: a delete
        whose answer was lost is sent again, and a second one changes nothing)."""
        conn = self._acker
        if conn is None or conn.closed or conn.broken:
            self._acker = None
            try:
                conn = self._acker = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=self.connect_timeout_s, application_name="telgate-ack"
                )
            except psycopg.OperationalError as exc:
                raise _Lost(f"cannot connect: {exc}") from exc
        try:
            conn.execute("UPDATE messages SET pending = false WHERE id = ANY(%s) AND pending", (ids,))
        except psycopg.Error as exc:
            if conn.broken:
                self._acker = None
                conn.close()
                raise _Lost(str(exc)) from exc
            raise

    def _close_acker(self) -> None:
        conn, self._acker = self._acker, None
        if conn is not None:
            conn.close()

    # -- the event loop's side ------------------------------------------------------------------
    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the PostgreSQL store: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._read_executor, self._close_reader)
        self._read_executor.shutdown(wait=True)
        await loop.run_in_executor(self._ack_executor, self._close_acker)
        self._ack_executor.shutdown(wait=True)
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    async def read(self, fn: Callable[[Txn], R]) -> R:
        """Like `run`, on the read-only connection; a lost connection is reconnected and `fn` run again
        (it decides nothing, so running it again is always safe)."""
        return await self._again(self._read_executor, self._read, fn)

    async def published(self, ids: list[int]) -> None:
        await self._again(self._ack_executor, self._published, ids)

    async def _again(self, executor: ThreadPoolExecutor, call: Callable[[Any], R], arg: Any) -> R:
        """`call(arg)` in `executor`'s thread, again after a lost connection (with backoff) until it
        answers: for what is safe to run twice."""
        loop = asyncio.get_running_loop()
        backoff = _Backoff(self.outage_s)
        while True:
            if self._closed:
                raise StoreError("store is closed")
            try:
                return await loop.run_in_executor(executor, call, arg)
            except _Lost as lost:
                await backoff.wait(lost)
            except psycopg.Error as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def run(self, fn: Callable[[Txn], R]) -> R:
        loop = asyncio.get_running_loop()
        backoff = _Backoff(self.outage_s)
        unsure: _Lost | None = None  # a COMMIT whose outcome is still to be learnt
        while True:
            if self._closed:
                raise StoreError("store is closed")
            try:
                if unsure is not None:
                    assert unsure.token is not None
                    verdict = await loop.run_in_executor(self._executor, self._verdict, unsure.token)
                    log.warning("outcome of a COMMIT cut off", extra={"token": unsure.token, "verdict": verdict})
                    if verdict == "committed":
                        return cast(R, unsure.result)
                    if verdict == "in progress":
                        raise _Lost("the cut-off COMMIT is still under way on the old connection")
                    unsure = None  # aborted: decide again
                return await loop.run_in_executor(self._executor, self._run, fn)
            except _Lost as lost:
                if lost.token is not None:
                    unsure = lost
                await backoff.wait(lost)
            except psycopg.Error as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc
