"""SQLite store: one connection owned by one thread; every `run` is one IMMEDIATE transaction.

WAL with synchronous=FULL: a committed decision survives a crash and a power loss; the engine's group
commit amortises the fsync over a batch of decisions.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from ..domain.effects import TimerKind
from ..domain.state import CampaignState, ContactState
from ..domain.statuses import Channel
from . import FINAL_STATUSES, PARTS, DeadLetter, Key, Lease, OutboxRow, StoreError, Timer, Txn, count_in_cache
from .migrate import Migration, pending

R = TypeVar("R")
ALL_PARTS = frozenset(range(PARTS))

MIGRATIONS = (
    Migration(
        1,
        "the schema before versioned migrations (an existing file is adopted as it is)",
        (
            """CREATE TABLE IF NOT EXISTS contacts (
                campaign_id TEXT NOT NULL,
                contact_id TEXT NOT NULL,
                channel TEXT NOT NULL,
                status TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                in_flight INTEGER NOT NULL DEFAULT 0,
                owner TEXT,
                ready_at REAL,
                priority INTEGER NOT NULL DEFAULT 1,
                state TEXT NOT NULL,
                PRIMARY KEY (campaign_id, contact_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX IF NOT EXISTS contacts_ready ON contacts (channel, priority, ready_at)"
            " WHERE ready_at IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS contacts_in_flight ON contacts (owner) WHERE in_flight = 1",
            # every bus message and every contact event, written once: `pending` rows are the outbox
            # (published in id order, cleared on PUBACK); rows with a contact are its event history
            """CREATE TABLE IF NOT EXISTS messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                retain INTEGER NOT NULL DEFAULT 0,
                correlation BLOB,
                created_at REAL NOT NULL,
                pending INTEGER NOT NULL,
                campaign_id TEXT,
                contact_id TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS messages_pending ON messages (id) WHERE pending = 1",
            "CREATE INDEX IF NOT EXISTS messages_contact ON messages (campaign_id, contact_id)"
            " WHERE contact_id IS NOT NULL",
            """CREATE TABLE IF NOT EXISTS campaigns (
                campaign_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                status TEXT NOT NULL,
                dialed_contacts INTEGER NOT NULL DEFAULT 0,
                talk_seconds REAL NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE IF NOT EXISTS timers (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                campaign_id TEXT NOT NULL,
                contact_id TEXT,
                due_at REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS timers_due ON timers (due_at)",
            "CREATE INDEX IF NOT EXISTS timers_contact ON timers (campaign_id, contact_id)",
            "CREATE TABLE IF NOT EXISTS blacklist (phone TEXT PRIMARY KEY)",
            "CREATE TABLE IF NOT EXISTS commands"
            " (command_id TEXT PRIMARY KEY, result BLOB NOT NULL, created_at REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS wamids"
            " (wamid TEXT PRIMARY KEY, campaign_id TEXT NOT NULL, contact_id TEXT NOT NULL)",
        ),
    ),
    Migration(
        2,
        "retention: wamids get a created_at (existing ones count from the upgrade), indexes to prune by age",
        (
            "ALTER TABLE wamids ADD COLUMN created_at REAL",
            "UPDATE wamids SET created_at = (julianday('now') - 2440587.5) * 86400.0",
            "CREATE INDEX messages_history ON messages (created_at) WHERE pending = 0",
            "CREATE INDEX commands_created ON commands (created_at)",
            "CREATE INDEX wamids_created ON wamids (created_at)",
        ),
    ),
    # the same version in both stores: a COMMIT on a local file has no answer to lose, so nothing here
    Migration(3, "commit marks (PostgreSQL only: the outcome of a COMMIT whose answer was lost)", ()),
    Migration(4, "members, partitions and leases (PostgreSQL only: one instance has a SQLite file to itself)", ()),
    Migration(
        5,
        "dead letters: outbox rows that can never be published, moved aside with the reason",
        (
            # `id` is the outbox row's (AUTOINCREMENT: never handed out twice); `part` is always 0 here
            """CREATE TABLE dead_letters (
                id INTEGER PRIMARY KEY,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                retain INTEGER NOT NULL DEFAULT 0,
                correlation BLOB,
                part INTEGER NOT NULL DEFAULT 0,
                reason TEXT NOT NULL,
                created_at REAL NOT NULL,
                dead_at REAL NOT NULL
            )""",
            "CREATE INDEX dead_letters_at ON dead_letters (dead_at)",
        ),
    ),
    Migration(
        6,
        "WhatsApp inbound: message ids seen (dedup), marketing opt-outs, template states; contacts by number",
        (
            "CREATE TABLE inbound_messages"
            " (wamid TEXT PRIMARY KEY, phone_number_id TEXT NOT NULL, received_at REAL NOT NULL)",
            "CREATE INDEX inbound_messages_received ON inbound_messages (received_at)",
            "CREATE TABLE marketing_opt_outs (phone TEXT PRIMARY KEY, since REAL NOT NULL)",
            """CREATE TABLE template_states (
                name TEXT NOT NULL,
                language TEXT NOT NULL,
                status TEXT NOT NULL,
                reason TEXT,
                updated_at REAL NOT NULL,
                PRIMARY KEY (name, language)
            ) WITHOUT ROWID""",
            # a contact's number and creation time as columns (written at its INSERT; neither changes
            # after it), for `latest_contact_by_phone`; existing contacts take them from their state
            "ALTER TABLE contacts ADD COLUMN phone TEXT",
            "ALTER TABLE contacts ADD COLUMN created_at REAL",
            "UPDATE contacts SET phone = json_extract(state, '$.phone'),"
            " created_at = (julianday(json_extract(state, '$.created_at')) - 2440587.5) * 86400.0"
            " WHERE json_extract(state, '$.phone') IS NOT NULL",
            # newest first by a backward scan; the key (campaign_id, contact_id) ends every entry
            "CREATE INDEX contacts_phone ON contacts (channel, phone, created_at) WHERE phone IS NOT NULL",
        ),
    ),
)


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _text(raw: bytes | str) -> str:
    """A TEXT column read as its bytes: invalid UTF-8 kept as lone surrogates, which no topic may hold."""
    return raw.decode("utf-8", "surrogateescape") if isinstance(raw, bytes) else raw


_CONTACT_COLUMNS = (
    "campaign_id, contact_id, channel, status, sequence, in_flight, owner, state, ready_at, priority, phone, created_at"
)
_MESSAGE_COLUMNS = "topic, payload, retain, correlation, created_at, pending, campaign_id, contact_id"
# Queued rows go out as INSERTs of a fixed number of rows, the rest one row per step of an executemany:
# two statements per table in the connection's statement cache, not one per size (a cache of prepared
# multi-row statements of every size grew the gateway's RSS with the queue, bench/ingest)
_ROWS_PER_INSERT = 80  # 960 bound values for contacts: under the 999 of SQLite before 3.32
# at most this many rows wait in a transaction's queue: a batch of bulk commands is ~9,000 contacts, and
# holding all their rows (and their payloads) until COMMIT raised the gateway's RSS by 13 MiB (bench/ingest)
_MAX_QUEUED = 4 * _ROWS_PER_INSERT
_INSERT_CONTACT = f"INSERT INTO contacts ({_CONTACT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
_INSERT_CONTACT_OR_IGNORE = _INSERT_CONTACT.replace("INSERT", "INSERT OR IGNORE", 1)
_INSERT_CONTACTS = f"INSERT INTO contacts ({_CONTACT_COLUMNS}) VALUES " + ",".join(
    ["(?,?,?,?,?,?,?,?,?,?,?,?)"] * _ROWS_PER_INSERT
)
_INSERT_MESSAGE = f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"
_INSERT_MESSAGES = f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES " + ",".join(
    ["(?,?,?,?,?,?,?,?)"] * _ROWS_PER_INSERT
)


def _insert(db: sqlite3.Connection, many: str, one: str, rows: list[tuple[object, ...]]) -> None:
    """In order: whole groups of _ROWS_PER_INSERT rows with `many`, the rest with `one`."""
    whole = len(rows) - len(rows) % _ROWS_PER_INSERT
    for start in range(0, whole, _ROWS_PER_INSERT):
        db.execute(many, [v for row in rows[start : start + _ROWS_PER_INSERT] for v in row])
    if whole < len(rows):
        db.executemany(one, rows[whole:])


def _chunks(items: list[str], size: int = 512) -> Iterator[list[str]]:
    """IN lists of at most `size` values (SQLite before 3.32 allows 999 variables in all), each padded
    with its last value to a power of two: a handful of statement shapes for the statement cache."""
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        width = 1 << (len(chunk) - 1).bit_length()
        yield chunk + [chunk[-1]] * (width - len(chunk))


class _SqliteTxn:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._campaigns: dict[str, CampaignState | None] = {}  # read once per transaction (one per batch)
        # contacts and command results read (prefetched) or written in this transaction: one writer holds
        # the file (BEGIN IMMEDIATE), so nothing else changes them meanwhile
        self._known: dict[Key, ContactState | None] = {}
        self._commands: dict[str, bytes | None] = {}
        self._messages: list[tuple[object, ...]] = []  # queued rows of `messages`, in id order
        self._contact_rows: list[tuple[object, ...]] = []  # queued INSERTs of contacts known to be new

    def prefetch(
        self, contacts: Collection[Key] = (), commands: Collection[str] = (), phones: Collection[str] = ()
    ) -> None:
        """One query per campaign (and one for the command ids) per batch, in chunks, instead of a lookup
        per contact and per command: each statement costs the store thread more in the sqlite3 module and
        in handing the GIL to the event loop and back than the page lookup itself (py-spy)."""
        keys = [k for k in dict.fromkeys(contacts) if k not in self._known]
        by_campaign: dict[str, list[str]] = {}
        for campaign_id, contact_id in keys:
            by_campaign.setdefault(campaign_id, []).append(contact_id)
            self._known[(campaign_id, contact_id)] = None
        for campaign_id, ids in by_campaign.items():
            for chunk in _chunks(ids):
                rows = self.db.execute(
                    f"SELECT state FROM contacts WHERE campaign_id=? AND contact_id IN ({','.join('?' * len(chunk))})",
                    (campaign_id, *chunk),
                ).fetchall()
                for (blob,) in rows:
                    state = ContactState.model_validate_json(blob)
                    self._known[(state.campaign_id, state.contact_id)] = state
        ids = [c for c in dict.fromkeys(commands) if c not in self._commands]
        self._commands.update(dict.fromkeys(ids))
        for chunk in _chunks(ids):
            for command_id, result in self.db.execute(
                f"SELECT command_id, result FROM commands WHERE command_id IN ({','.join('?' * len(chunk))})", chunk
            ):
                self._commands[command_id] = bytes(result)

    # contacts
    def get_contact(self, key: Key) -> ContactState | None:
        if key in self._known:
            return self._known[key]
        self._flush_contacts()  # it may be one of the queued INSERTs
        row = self.db.execute("SELECT state FROM contacts WHERE campaign_id=? AND contact_id=?", key).fetchone()
        state = None if row is None else ContactState.model_validate_json(row[0])
        self._known[key] = state
        return state

    def put_contact(
        self, state: ContactState, expected_sequence: int, owner: str | None, ready: tuple[datetime, int] | None = None
    ) -> bool:
        blob = state.model_dump_json(exclude_defaults=True)
        key = (state.campaign_id, state.contact_id)
        if expected_sequence == 0:
            row = (
                state.campaign_id,
                state.contact_id,
                state.channel,
                state.status,
                state.sequence,
                int(state.in_flight),
                owner,
                blob,
                None if ready is None else _ts(ready[0]),
                1 if ready is None else ready[1],
                state.phone,
                None if state.created_at is None else _ts(state.created_at),
            )
            if key in self._known and self._known[key] is None:
                # read as absent in this transaction, which holds the file's write lock: the INSERT cannot
                # conflict, so it is queued and sent with the others (a multi-row INSERT, `flush`)
                self._contact_rows.append(row)
                # not kept: a batch of bulk commands writes ~9,000 new contacts, whose states held until
                # COMMIT raised the RSS with every batch; a later read in this transaction asks the file
                del self._known[key]
                if len(self._contact_rows) >= _MAX_QUEUED:
                    self._flush_contacts()
                return True
            self._flush_contacts()
            cur = self.db.execute(_INSERT_CONTACT_OR_IGNORE, row)
        else:
            self._flush_contacts()  # the UPDATE may be of a contact whose INSERT is queued
            cur = self.db.execute(
                "UPDATE contacts SET status=?, sequence=?, in_flight=?, owner=COALESCE(?, owner), state=?"
                " WHERE campaign_id=? AND contact_id=? AND sequence=?",
                (
                    state.status,
                    state.sequence,
                    int(state.in_flight),
                    owner,
                    blob,
                    state.campaign_id,
                    state.contact_id,
                    expected_sequence,
                ),
            )
        self._known.pop(key, None)  # read again from the file if asked (see above)
        return cur.rowcount == 1  # else a conflict: the transaction is rolled back and decided again

    def _flush_contacts(self) -> None:
        """Send the queued contact INSERTs: before any other statement that reads or changes contacts."""
        rows, self._contact_rows = self._contact_rows, []
        if rows:
            _insert(self.db, _INSERT_CONTACTS, _INSERT_CONTACT, rows)

    def set_ready(self, key: Key, ready_at: datetime | None, priority: int = 1) -> None:
        self._flush_contacts()
        self.db.execute(
            "UPDATE contacts SET ready_at=?, priority=? WHERE campaign_id=? AND contact_id=?",
            (None if ready_at is None else _ts(ready_at), priority, *key),
        )

    def _skip_clause(self, skip: frozenset[str]) -> tuple[str, list[str]]:
        if not skip:
            return "", []
        return f" AND c.campaign_id NOT IN ({','.join('?' * len(skip))})", sorted(skip)

    def ready_contacts(self, channel: Channel, now: datetime, limit: int, skip: frozenset[str]) -> list[Key]:
        self._flush_contacts()
        clause, args = self._skip_clause(skip)
        rows = self.db.execute(
            "SELECT c.campaign_id, c.contact_id FROM contacts c JOIN campaigns g ON g.campaign_id = c.campaign_id"
            " WHERE c.channel=? AND c.ready_at IS NOT NULL AND c.ready_at <= ? AND g.status='in_progress'"
            f"{clause} ORDER BY c.priority, c.ready_at, c.campaign_id, c.contact_id LIMIT ?",
            (channel, _ts(now), *args, limit),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def next_ready_at(self, channel: Channel, skip: frozenset[str]) -> datetime | None:
        self._flush_contacts()
        clause, args = self._skip_clause(skip)
        row = self.db.execute(
            "SELECT MIN(c.ready_at) FROM contacts c JOIN campaigns g ON g.campaign_id = c.campaign_id"
            f" WHERE c.channel=? AND c.ready_at IS NOT NULL AND g.status='in_progress'{clause}",
            (channel, *args),
        ).fetchone()
        return None if row[0] is None else _dt(row[0])

    def latest_contact_by_phone(self, channel: str, phone: str) -> Key | None:
        self._flush_contacts()
        row = self.db.execute(
            "SELECT c.campaign_id, c.contact_id FROM contacts c JOIN campaigns g ON g.campaign_id = c.campaign_id"
            " WHERE c.channel=? AND c.phone=? AND g.status='in_progress'"
            " ORDER BY c.created_at DESC, c.campaign_id DESC, c.contact_id DESC LIMIT 1",  # NULLs last
            (channel, phone),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def in_flight_contacts(self, owner: str) -> list[Key]:
        self._flush_contacts()
        rows = self.db.execute(
            "SELECT campaign_id, contact_id FROM contacts WHERE in_flight=1 AND (owner=? OR owner IS NULL)",
            (owner,),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def unfinished_contacts(self, campaign_id: str) -> list[Key]:
        self._flush_contacts()
        rows = self.db.execute(
            "SELECT campaign_id, contact_id FROM contacts WHERE campaign_id=?"
            f" AND status NOT IN ({','.join('?' * len(FINAL_STATUSES))})",
            (campaign_id, *FINAL_STATUSES),
        ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def campaigns_with_channel(self, channel: Channel, status: str) -> list[str]:
        self._flush_contacts()
        rows = self.db.execute(
            "SELECT g.campaign_id FROM campaigns g WHERE g.status = ? AND EXISTS"
            " (SELECT 1 FROM contacts c WHERE c.campaign_id = g.campaign_id AND c.channel = ?)",
            (status, channel),
        ).fetchall()
        return [r[0] for r in rows]

    def counts(self, campaign_id: str) -> dict[str, int]:
        self._flush_contacts()
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM contacts WHERE campaign_id=? GROUP BY status", (campaign_id,)
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def all_counts(self) -> list[tuple[str, str, str, int]]:
        self._flush_contacts()
        rows = self.db.execute(
            "SELECT campaign_id, channel, status, COUNT(*) FROM contacts GROUP BY campaign_id, channel, status"
        ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    # events and outbox: one table. Rows are queued and written in order by `flush` (before COMMIT, and
    # before anything in this transaction reads the table): a multi-row INSERT of a batch's events and
    # results instead of a statement each
    def add_event(self, key: Key, topic: str, payload: bytes) -> None:
        self._message((topic, payload, 0, None, time.time(), 1, key[0], key[1]))

    def record(self, key: Key, payload: bytes) -> None:
        self._message(("", payload, 0, None, time.time(), 0, key[0], key[1]))

    def _message(self, row: tuple[object, ...]) -> None:
        self._messages.append(row)
        if len(self._messages) >= _MAX_QUEUED:
            self._flush_messages()

    def _flush_messages(self) -> None:
        rows, self._messages = self._messages, []
        if rows:
            _insert(self.db, _INSERT_MESSAGES, _INSERT_MESSAGE, rows)

    def flush(self) -> None:
        """Send every queued row (before COMMIT, and before a statement that reads what they change)."""
        self._flush_contacts()
        self._flush_messages()

    def events(self, key: Key) -> list[bytes]:
        self.flush()
        rows = self.db.execute(
            "SELECT payload FROM messages WHERE campaign_id=? AND contact_id=? ORDER BY id", key
        ).fetchall()
        return [bytes(r[0]) for r in rows]

    def add_outbox(
        self,
        topic: str,
        payload: bytes,
        retain: bool = False,
        correlation: bytes | None = None,
        part_key: str | None = None,
    ) -> None:
        self._message((topic, payload, int(retain), correlation, time.time(), 1, None, None))

    def outbox_fetch(
        self, after_id: int, limit: int, parts: Collection[int] | None = None, skip: Collection[int] = ()
    ) -> list[OutboxRow]:
        self.flush()
        # one instance holds every partition (SqliteStore.shared is False): `parts` is all of them; its
        # publisher follows a cursor, so `skip` is rarely more than a few rows, left out here
        # the topic as its bytes: a row whose topic is not UTF-8 (a bug, a raw INSERT) must reach the
        # publisher, which moves it to the dead letters, instead of failing every fetch in sqlite3's decode
        rows = self.db.execute(
            "SELECT id, CAST(topic AS BLOB), payload, retain, correlation, created_at FROM messages"
            " WHERE pending = 1 AND id > ? ORDER BY id LIMIT ?",
            (after_id, limit + len(skip)),
        ).fetchall()
        out = [OutboxRow(r[0], _text(r[1]), bytes(r[2]), bool(r[3]), r[4], r[5]) for r in rows if r[0] not in skip]
        return out[:limit]

    def outbox_delete(self, ids: list[int]) -> None:
        self.flush()
        self.db.executemany("UPDATE messages SET pending = 0 WHERE id=?", [(i,) for i in ids])

    def outbox_dead_letter(self, moves: Collection[tuple[int, str]]) -> list[int]:
        self.flush()
        now = time.time()
        moved = []
        for row_id, reason in sorted(dict(moves).items()):
            inserted = self.db.execute(
                "INSERT OR IGNORE INTO dead_letters"
                " (id, topic, payload, retain, correlation, part, reason, created_at, dead_at)"
                " SELECT id, topic, payload, retain, correlation, 0, ?, created_at, ? FROM messages"
                " WHERE id = ? AND pending = 1",
                (reason, now, row_id),
            ).rowcount
            if inserted:
                self.db.execute("UPDATE messages SET pending = 0 WHERE id = ?", (row_id,))
                moved.append(row_id)
        return moved

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = self.db.execute(
            "SELECT id, CAST(topic AS BLOB), payload, retain, correlation, part, reason, created_at, dead_at"
            " FROM dead_letters ORDER BY dead_at DESC, id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(r[0], _text(r[1]), bytes(r[2]), bool(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]

    def outbox_stats(self) -> tuple[int, float | None]:
        self.flush()
        row = self.db.execute("SELECT COUNT(*), MIN(created_at) FROM messages WHERE pending = 1").fetchone()
        return int(row[0]), row[1]

    def in_flight_counts(self, channel: Channel) -> dict[str, int]:
        self._flush_contacts()
        rows = self.db.execute(
            "SELECT campaign_id, COUNT(*) FROM contacts WHERE in_flight=1 AND channel=? GROUP BY campaign_id",
            (channel,),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    # several instances: a SQLite file belongs to one instance, which holds every lease there is
    def lock_dispatch(self, channel: Channel) -> bool:
        """BEGIN IMMEDIATE already keeps every other writer out."""
        return True

    def lock_campaign(self, campaign_id: str) -> CampaignState | None:
        return self.get_campaign(campaign_id)

    def notify(self, payload: bytes) -> None:
        """Nobody else to tell."""

    def lease_join(self, member: str, epoch: int, lease_s: float, bus_client: str = "") -> int | None:
        return None

    def lease_renew(self, member: str, epoch: int, lease_s: float, release: Collection[int]) -> Lease:
        return Lease(held=True, members=(member,), parts=ALL_PARTS)

    def lease_bury(self, member: str) -> str | None:
        return None

    def lease_leave(self, member: str, epoch: int) -> None:
        """Nothing was written."""

    # timers
    def add_timer(self, kind: TimerKind, campaign_id: str, contact_id: str | None, due_at: datetime) -> None:
        self.db.execute(
            "INSERT INTO timers (kind, campaign_id, contact_id, due_at) VALUES (?,?,?,?)",
            (kind, campaign_id, contact_id, _ts(due_at)),
        )

    def cancel_timers(self, key: Key) -> None:
        self.db.execute("DELETE FROM timers WHERE campaign_id=? AND contact_id=?", key)

    def due_timers(self, now: datetime, limit: int) -> list[Timer]:
        rows = self.db.execute(
            "SELECT id, kind, campaign_id, contact_id, due_at FROM timers WHERE due_at <= ?"
            " ORDER BY due_at, id LIMIT ?",
            (_ts(now), limit),
        ).fetchall()
        return [Timer(r[0], TimerKind(r[1]), r[2], r[3], _dt(r[4])) for r in rows]

    def delete_timer(self, timer_id: int) -> bool:
        return self.db.execute("DELETE FROM timers WHERE id=?", (timer_id,)).rowcount == 1

    def next_timer_at(self) -> datetime | None:
        row = self.db.execute("SELECT MIN(due_at) FROM timers").fetchone()
        return None if row[0] is None else _dt(row[0])

    # campaigns
    def get_campaign(self, campaign_id: str) -> CampaignState | None:
        if campaign_id in self._campaigns:
            return self._campaigns[campaign_id]
        state = self._read_campaign(campaign_id)
        self._campaigns[campaign_id] = state
        return state

    def _read_campaign(self, campaign_id: str) -> CampaignState | None:
        row = self.db.execute(
            "SELECT state, dialed_contacts, talk_seconds FROM campaigns WHERE campaign_id=?", (campaign_id,)
        ).fetchone()
        if row is None:
            return None
        state = CampaignState.model_validate_json(row[0])
        return state.model_copy(update={"dialed_contacts": row[1], "talk_seconds": row[2]})

    def put_campaign(self, state: CampaignState, created: bool = False) -> None:
        """Status and settings; the counters are only ever moved by `bump_campaign`."""
        self._campaigns.pop(state.campaign_id, None)
        blob = state.model_dump_json(exclude={"dialed_contacts", "talk_seconds"})
        self.db.execute(
            "INSERT INTO campaigns (campaign_id, state, status) VALUES (?,?,?) ON CONFLICT(campaign_id)"
            " DO UPDATE SET state=excluded.state, status=excluded.status",
            (state.campaign_id, blob, state.status),
        )

    def count_dialed(self, campaign_id: str, n: int = 1) -> None:
        self._count(campaign_id, "dialed_contacts", n)

    def count_talk(self, campaign_id: str, seconds: float) -> None:
        self._count(campaign_id, "talk_seconds", seconds)

    def _count(self, campaign_id: str, counter: str, n: float) -> None:
        self.db.execute(f"UPDATE campaigns SET {counter} = {counter} + ? WHERE campaign_id = ?", (n, campaign_id))
        count_in_cache(self._campaigns, campaign_id, counter, n)

    def bump_campaign(self, campaign_id: str, dialed: int = 0, talk_s: float = 0.0) -> tuple[float, float | None]:
        self._campaigns.pop(campaign_id, None)
        row = self.db.execute(
            "UPDATE campaigns SET dialed_contacts = dialed_contacts + ?, talk_seconds = talk_seconds + ?"
            " WHERE campaign_id = ? RETURNING talk_seconds, json_extract(state, '$.budget.max_talk_minutes')",
            (dialed, talk_s, campaign_id),
        ).fetchone()
        return (0.0, None) if row is None else (float(row[0]), row[1])

    # blacklist, commands, wamids
    def is_blacklisted(self, phone: str) -> bool:
        return self.db.execute("SELECT 1 FROM blacklist WHERE phone=?", (phone,)).fetchone() is not None

    def blacklist(self, phone: str, add: bool) -> None:
        if add:
            self.db.execute("INSERT OR IGNORE INTO blacklist (phone) VALUES (?)", (phone,))
        else:
            self.db.execute("DELETE FROM blacklist WHERE phone=?", (phone,))

    def get_command(self, command_id: str) -> bytes | None:
        if command_id in self._commands:
            return self._commands[command_id]
        row = self.db.execute("SELECT result FROM commands WHERE command_id=?", (command_id,)).fetchone()
        result = None if row is None else bytes(row[0])
        self._commands[command_id] = result
        return result

    def put_command(self, command_id: str, result: bytes) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO commands (command_id, result, created_at) VALUES (?,?,?)",
            (command_id, result, datetime.now(UTC).timestamp()),
        )
        self._commands[command_id] = result

    def map_wamid(self, wamid: str, key: Key) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO wamids (wamid, campaign_id, contact_id, created_at) VALUES (?,?,?,?)",
            (wamid, *key, time.time()),
        )

    def lookup_wamid(self, wamid: str) -> Key | None:
        row = self.db.execute("SELECT campaign_id, contact_id FROM wamids WHERE wamid=?", (wamid,)).fetchone()
        return None if row is None else (row[0], row[1])

    # what customers and Meta send to the business's number
    def note_inbound(self, wamid: str, phone_number_id: str, now: datetime) -> bool:
        return (
            self.db.execute(
                "INSERT OR IGNORE INTO inbound_messages (wamid, phone_number_id, received_at) VALUES (?,?,?)",
                (wamid, phone_number_id, _ts(now)),
            ).rowcount
            == 1
        )

    def set_marketing_opt_out(self, phone: str, stop: bool, now: datetime) -> None:
        if stop:
            self.db.execute("INSERT OR IGNORE INTO marketing_opt_outs (phone, since) VALUES (?,?)", (phone, _ts(now)))
        else:
            self.db.execute("DELETE FROM marketing_opt_outs WHERE phone=?", (phone,))

    def marketing_opted_out(self, phone: str) -> bool:
        return self.db.execute("SELECT 1 FROM marketing_opt_outs WHERE phone=?", (phone,)).fetchone() is not None

    def set_template_state(self, name: str, language: str, status: str, reason: str | None, now: datetime) -> None:
        self.db.execute(
            "INSERT INTO template_states (name, language, status, reason, updated_at) VALUES (?,?,?,?,?)"
            " ON CONFLICT (name, language) DO UPDATE SET status=excluded.status, reason=excluded.reason,"
            " updated_at=excluded.updated_at",
            (name, language, status, reason, _ts(now)),
        )

    def template_state(self, name: str, language: str) -> tuple[str, str | None] | None:
        row = self.db.execute(
            "SELECT status, reason FROM template_states WHERE name=? AND language IN (?, '')"
            " ORDER BY language = '' LIMIT 1",  # the exact language first
            (name, language),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # retention
    def prune(self, older_than: datetime) -> dict[str, int]:
        cutoff = _ts(older_than)
        self._commands.clear()  # what this transaction knew of them may be deleted now
        self.flush()
        return {
            "messages": self.db.execute(
                "DELETE FROM messages WHERE pending = 0 AND created_at < ?", (cutoff,)
            ).rowcount,
            "commands": self.db.execute("DELETE FROM commands WHERE created_at < ?", (cutoff,)).rowcount,
            "wamids": self.db.execute("DELETE FROM wamids WHERE created_at < ?", (cutoff,)).rowcount,
            "dead_letters": self.db.execute("DELETE FROM dead_letters WHERE dead_at < ?", (cutoff,)).rowcount,
            "inbound_messages": self.db.execute(
                "DELETE FROM inbound_messages WHERE received_at < ?", (cutoff,)
            ).rowcount,
        }


def _migrate(db: sqlite3.Connection, where: str) -> list[int]:
    """Each missing step in an IMMEDIATE transaction of its own, re-reading the version under the lock."""
    applied: list[int] = []
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version INTEGER PRIMARY KEY, what TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            steps = pending(MIGRATIONS, current, where)
            if steps:
                for statement in steps[0].statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, what, applied_at) VALUES (?,?,?)",
                    (steps[0].version, steps[0].what, time.time()),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if not steps:
            return applied
        applied.append(steps[0].version)


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store")
        self._db: sqlite3.Connection | None = None
        # reads on a connection and thread of their own: WAL lets them run beside the writer's
        # transaction instead of queueing behind it for BEGIN IMMEDIATE
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store-read")
        self._reader: sqlite3.Connection | None = None
        self._migrated: list[int] = []

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def migrated(self) -> list[int]:
        return list(self._migrated)

    @property
    def shared(self) -> bool:
        return False

    async def notifications(self) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()  # a file one instance has to itself: nobody else notifies
        yield b""  # pragma: no cover - never reached

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        try:
            self._migrated = _migrate(db, str(self.path))
        except BaseException:
            db.close()
            raise
        self._db = db

    def _open_reader(self) -> None:
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only=1")  # a write through it fails: reads only
        reader.execute("PRAGMA busy_timeout=10000")
        self._reader = reader

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)  # migrations first, by the writer
            await loop.run_in_executor(self._read_executor, self._open_reader)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        reader, self._reader = self._reader, None
        if reader is not None:
            await loop.run_in_executor(self._read_executor, reader.close)
        self._read_executor.shutdown(wait=True)
        db, self._db = self._db, None
        if db is not None:
            await loop.run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    def _run(self, fn: Callable[[Txn], R]) -> R:
        db = self._db
        if db is None:
            raise StoreError("store is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            txn = _SqliteTxn(db)
            result = fn(txn)
            txn.flush()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def run(self, fn: Callable[[Txn], R]) -> R:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _read(self, fn: Callable[[Txn], R]) -> R:
        db = self._reader
        if db is None:
            raise StoreError("store is closed")
        db.execute("BEGIN DEFERRED")  # one snapshot for the whole of fn
        try:
            txn = _SqliteTxn(db)
            result = fn(txn)
            txn.flush()  # a write queued by a read fails here, on the read-only connection
            return result
        finally:
            db.execute("COMMIT")

    async def published(self, ids: list[int]) -> None:
        # one writer per file: the delete waits for the write lock either way, so it queues behind the
        # writer's transactions instead of contending for the lock from a connection of its own
        await self.run(lambda t: t.outbox_delete(ids))

    async def read(self, fn: Callable[[Txn], R]) -> R:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._read_executor, self._read, fn)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
