"""Contacts and the ready queue: each contact's state (a compare-and-set on its sequence and row
version), its place in the dispatch queue, the reads of the queue and of the counts, and the dispatch
turn's lock with the calls in flight it counts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import psycopg

from gateway.domain.state import ContactState
from gateway.domain.statuses import Channel
from gateway.store import FINAL_STATUSES, Key, partition
from gateway.store.postgres.batch import Group, WriteBatch

DISPATCH_LOCK = 0x74656C68  # pg_advisory_xact_lock(DISPATCH_LOCK, channel's): one dispatch turn at a time

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


class Contacts(WriteBatch):
    def __init__(self, conn: psycopg.Connection[Any], read_only: bool = False) -> None:
        super().__init__(conn, read_only)
        self._known: dict[Key, ContactState | None] = {}  # contacts as this transaction read or wrote them
        # contacts whose latest write is a queued UPDATE_CONTACT: its group and row (set_ready rides along)
        self._updates: dict[Key, tuple[Group, int]] = {}
        self._counted_in_flight: tuple[Channel, dict[str, int]] | None = None  # by lock_dispatch, for the turn
        self._versions: dict[Key, int] = {}  # their row versions (compare-and-set)

    def _read_contacts(self, rows: list[tuple[Any, ...]]) -> None:
        for blob, version in rows:
            state = ContactState.model_validate_json(blob)
            self._known[(state.campaign_id, state.contact_id)] = state
            self._versions[(state.campaign_id, state.contact_id)] = version

    def _queue_contact(self, sql: str, row: tuple[Any, ...], key: Key) -> Group:
        self._updates.pop(key, None)  # a later write to the contact: nothing rides along
        self._counted_in_flight = None
        return self._queue("contacts", sql, row, key)

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
                group = self._queue_contact(sql, row, key)  # its WHERE is checked when it is sent
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
        self._queue_contact(
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

    def in_flight_counts(self, channel: Channel) -> dict[str, int]:
        counted, self._counted_in_flight = self._counted_in_flight, None
        if counted is not None and counted[0] == channel:
            return counted[1]  # counted with the dispatch lock, and no contact written since
        self._flush("contacts")
        return {r[0]: r[1] for r in self._all(IN_FLIGHT_COUNTS, (channel,))}

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
