"""How a transaction's writes reach the server. A write whose answer the caller does not need is queued
by table and statement and sent when a read needs its table or at commit: each statement's rows as one
`executemany`, the groups and the reads that must see them in one pipeline (one round trip), a big group
that has a COPY form as one binary COPY; the compare-and-set groups' row counts are checked after it."""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg

from gateway.store import Conflict

COPY_AT = 32  # rows


@dataclass
class Group:
    """Queued rows of one statement, sent as one executemany."""

    sql: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    keys: set[Hashable] = field(default_factory=set)


class WriteBatch:
    """The write queue of one transaction on `conn`; the table modules build their methods on it."""

    # statements each row of which must change exactly one row (the compare-and-set), and those a big
    # group of is sent as one binary COPY instead (a fifth of psycopg's work per row; COPY cannot join a
    # pipeline, so it costs a round trip of its own and small groups stay statements): the transaction
    # that assembles the tables names them
    CAS: ClassVar[frozenset[str]] = frozenset()
    COPY_FORMS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {}

    def __init__(self, conn: psycopg.Connection[Any], read_only: bool = False) -> None:
        self.conn = conn
        self.read_only = read_only
        self.cur = conn.cursor()
        self._queued: dict[str, list[Group]] = {}  # table -> groups, sent in order
        # what the other instances are woken for once this commits: rows to publish, contacts ready
        self._wakes: set[str] = set()

    def _queue(self, table: str, sql: str, row: tuple[Any, ...], key: Hashable) -> Group:
        """Queue a row. It joins the latest group of the same statement unless a later group touches
        the same key (then order matters, and it starts a group of its own at the end)."""
        groups = self._queued.setdefault(table, [])
        target: Group | None = None
        for group in reversed(groups):
            if group.sql == sql:
                target = group
                break
            if key in group.keys:
                break
        if target is None:
            target = Group(sql)
            groups.append(target)
        target.rows.append(row)
        target.keys.add(key)
        return target

    def _take(self, tables: Collection[str]) -> list[Group]:
        """The groups queued for `tables`, in order; a big one with a COPY form is sent now (only the first
        of its table: a later group may touch what it writes)."""
        groups = []
        for table in tables:
            queued = self._queued.pop(table, [])
            if queued and len(queued[0].rows) >= COPY_AT and queued[0].sql in self.COPY_FORMS:
                copy_sql, types = self.COPY_FORMS[queued[0].sql]
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
        check(checks)
        return cursors

    def _execute(self, groups: list[Group], cur: psycopg.Cursor[Any] | None = None) -> list[tuple[Any, int]]:
        """Execute `groups` in order, on `cur` or (in a pipeline) each on a cursor of its own, which keeps
        its row count until the pipeline's sync; returns the compare-and-set ones' cursors and counts."""
        checks = []
        for group in groups:
            c = cur or self.conn.cursor()
            if len(group.rows) == 1:
                c.execute(group.sql, group.rows[0])
            else:
                c.executemany(group.sql, group.rows)
            if group.sql in self.CAS:
                checks.append((c, len(group.rows)))
        return checks

    def _one(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        return self.cur.execute(sql, args).fetchone()

    def _all(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        return self.cur.execute(sql, args).fetchall()


def check(checks: list[tuple[Any, int]]) -> None:
    """Each compare-and-set group changed one row per row sent, or another instance moved one of them."""
    for cur, expected in checks:
        if cur.rowcount != expected:
            raise Conflict(f"{expected - cur.rowcount} contact(s) moved under this transaction")
