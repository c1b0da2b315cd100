"""The WhatsApp tables: the wamid map (a sent message's id to its contact), and what customers and Meta send
to the business's number — inbound message ids seen, marketing opt-outs, template states."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from gateway.store import Key
from gateway.store.postgres.batch import WriteBatch


class WhatsApp(WriteBatch):
    def __init__(self, conn: psycopg.Connection[Any], read_only: bool = False) -> None:
        super().__init__(conn, read_only)
        self._opted_out: dict[str, bool] = {}  # marketing opt-outs looked up or changed here
        self._inbound: set[str] = set()  # inbound wamids noted here (a second one is a duplicate)

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
