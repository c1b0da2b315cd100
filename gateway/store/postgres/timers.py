"""Timers: retries and ring timeouts due at a time, per contact or per campaign."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from gateway.domain.effects import TimerKind
from gateway.store import Key, Timer
from gateway.store.postgres.batch import WriteBatch


class Timers(WriteBatch):
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
