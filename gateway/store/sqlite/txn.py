"""The SQLite store's transaction: every table's reads and writes on one connection, new contacts and
messages queued and sent as multi-row INSERTs."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Collection, Iterator
from datetime import UTC, datetime

from gateway.domain.effects import TimerKind
from gateway.domain.limits import NumberHistory
from gateway.domain.state import CampaignState, ContactState
from gateway.domain.statuses import Channel
from gateway.store import (
    FINAL_STATUSES,
    PARTS,
    DeadLetter,
    Key,
    Lease,
    OutboxRow,
    Timer,
    count_in_cache,
    history_from_rows,
)

ALL_PARTS = frozenset(range(PARTS))


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


class SqliteTxn:
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

    # numbers over every campaign (the caps; one writer holds the file, so nothing moves under the read)
    def note_number(self, phone: str, kind: str, at: datetime, campaign_id: str) -> None:
        self.db.execute(
            "INSERT INTO number_history (phone, at, kind, campaign_id) VALUES (?,?,?,?)",
            (phone, _ts(at), kind, campaign_id),
        )

    def number_history(self, phone: str, since: datetime) -> NumberHistory:
        rows = self.db.execute(
            "SELECT kind, at FROM number_history WHERE phone=? AND at >= ?", (phone, _ts(since))
        ).fetchall()
        return history_from_rows((kind, _dt(at)) for kind, at in rows)

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
    def prune(self, older_than: datetime, numbers_older_than: datetime | None = None) -> dict[str, int]:
        cutoff = _ts(older_than)
        self._commands.clear()  # what this transaction knew of them may be deleted now
        self.flush()
        numbers = {}
        if numbers_older_than is not None:
            numbers["number_history"] = self.db.execute(
                "DELETE FROM number_history WHERE at < ?", (_ts(numbers_older_than),)
            ).rowcount
        return numbers | {
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
