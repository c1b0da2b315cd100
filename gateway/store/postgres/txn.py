"""The PostgreSQL store's transaction: the tables' methods on one write queue (batch.py), and what spans
them — the prefetch of a batch's reads, retention, and the end of a transaction that wrote (its commit
mark and the wake-ups for the other instances)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any

from gateway.store import Key
from gateway.store.postgres.blacklist import Blacklist
from gateway.store.postgres.campaigns import INSERT_CAMPAIGN, Campaigns
from gateway.store.postgres.cluster import Cluster
from gateway.store.postgres.commands import Commands
from gateway.store.postgres.connection import MARK, NOTIFY_CHANNEL
from gateway.store.postgres.contacts import INSERT_CONTACT, UPDATE_CONTACT, UPDATE_CONTACT_VERSIONED, Contacts
from gateway.store.postgres.numbers import Numbers
from gateway.store.postgres.outbox import INSERT_MESSAGE, INSERT_MESSAGE_COPY, Outbox
from gateway.store.postgres.timers import Timers
from gateway.store.postgres.whatsapp import WhatsApp


class PgTxn(Contacts, Outbox, Timers, Campaigns, Cluster, Blacklist, Commands, WhatsApp, Numbers):
    # each row must change exactly one row
    CAS = frozenset({INSERT_CONTACT, UPDATE_CONTACT, UPDATE_CONTACT_VERSIONED, INSERT_CAMPAIGN})
    COPY_FORMS = {INSERT_MESSAGE: INSERT_MESSAGE_COPY}

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

    def finish(self, owner: str) -> int | None:
        """Before COMMIT: send the rest, and when the transaction wrote anything, its commit mark (the
        token it returns). One round trip: the wake-ups, the queued groups and the mark in one pipeline;
        the compare-and-set counts are checked before the caller's COMMIT."""
        token = secrets.randbits(63)
        # the wake-ups are delivered at COMMIT, and only if it commits
        wakes = [("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, json.dumps({"wake": w}))) for w in sorted(self._wakes)]
        mark = self._send(tuple(self._queued), [*wakes, (MARK, (owner, token))])[-1]
        return token if mark.rowcount == 1 else None

    def prune(self, older_than: datetime, numbers_older_than: datetime | None = None) -> dict[str, int]:
        self._flush()
        self._inbound.clear()  # what this transaction noted may be deleted now
        counts = {}
        if numbers_older_than is not None:
            counts["number_history"] = self.cur.execute(
                "DELETE FROM number_history WHERE at < %s", (numbers_older_than,)
            ).rowcount
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
