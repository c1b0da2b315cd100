"""Events and the outbox (one table, `messages`: one statement, so ids follow the calls) and the dead
letters, the outbox rows that can never be published, moved aside with their reason."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from gateway.store import DeadLetter, Key, OutboxRow, contact_partition, partition
from gateway.store.postgres.batch import WriteBatch

INSERT_MESSAGE = (
    "INSERT INTO messages (topic, payload, retain, correlation, pending, campaign_id, contact_id, part)"
    " VALUES (%s,%s,%s,%s,%s,%s,%s,%s)"
)
# its COPY form (batch.py), for a big group of it
INSERT_MESSAGE_COPY = (
    "COPY messages (topic, payload, retain, correlation, pending, campaign_id, contact_id, part)"
    " FROM STDIN (FORMAT BINARY)",
    ("text", "bytea", "bool", "bytea", "bool", "text", "text", "int2"),
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


class Outbox(WriteBatch):
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
