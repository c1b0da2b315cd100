"""The blacklist: numbers never to be contacted."""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.store.postgres.batch import WriteBatch


class Blacklist(WriteBatch):
    def __init__(self, conn: psycopg.Connection[Any], read_only: bool = False) -> None:
        super().__init__(conn, read_only)
        self._blacklisted: dict[str, bool] = {}  # numbers looked up (prefetched) or changed here

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
