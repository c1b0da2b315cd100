"""Numbers over every campaign (docs/lawful-calling.md): the facts the caps count — attempts, refusals,
opt-outs, abandons — and the lock that makes the decisions about one number one at a time in the cluster."""

from __future__ import annotations

from datetime import datetime

from gateway.domain.limits import NumberHistory
from gateway.store import history_from_rows
from gateway.store.postgres.batch import WriteBatch

# pg_advisory_xact_lock(NUMBER_LOCK, hashtext(phone)): the transaction that reads a number's history holds
# the number until it ends, so another instance's dial of it reads the history with this one's attempt
NUMBER_LOCK = 0x74656C6E
NOTE = "INSERT INTO number_history (phone, at, kind, campaign_id) VALUES (%s,%s,%s,%s)"


class Numbers(WriteBatch):
    def note_number(self, phone: str, kind: str, at: datetime, campaign_id: str) -> None:
        self._queue("number_history", NOTE, (phone, at, kind, campaign_id), phone)

    def number_history(self, phone: str, since: datetime) -> NumberHistory:
        """The lock, then the read, in one round trip with the notes this transaction queued (its own
        attempts count too). Waits while another transaction holds the number: only the one that commits
        first passes a cap both would have passed."""
        read = ("SELECT kind, at FROM number_history WHERE phone=%s AND at >= %s", (phone, since))
        lock = ("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (NUMBER_LOCK, phone))
        cursors = self._send(("number_history",), [read] if self.read_only else [lock, read])
        return history_from_rows((kind, at) for kind, at in cursors[-1].fetchall())
