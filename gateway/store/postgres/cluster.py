"""What several instances share (docs/cluster.md): members and their leases, the outbox partitions leased
to one member at a time, and NOTIFY."""

from __future__ import annotations

import math
from collections.abc import Collection

from gateway.store import PARTS, Lease
from gateway.store.postgres.batch import WriteBatch
from gateway.store.postgres.connection import NOTIFY_CHANNEL


class Cluster(WriteBatch):
    def notify(self, payload: bytes) -> None:
        self._queue("notify", "SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload.decode()), None)

    def lease_join(self, member: str, epoch: int, lease_s: float, bus_client: str = "") -> int | None:
        self._flush()
        row = self._one("SELECT epoch, expires_at > now() FROM members WHERE gateway_id=%s FOR UPDATE", (member,))
        if row is not None and row[1] and row[0] != epoch:
            return int(row[0])
        self.cur.execute(
            "INSERT INTO members (gateway_id, epoch, bus_client, expires_at)"
            " VALUES (%s, %s, %s, now() + make_interval(secs => %s)) ON CONFLICT (gateway_id) DO UPDATE"
            " SET epoch = excluded.epoch, bus_client = excluded.bus_client, expires_at = excluded.expires_at,"
            " joined_at = now()",
            (member, epoch, bus_client, lease_s),
        )
        # a previous run of this id held partitions: free them (its rows are published by whoever takes them)
        self.cur.execute("UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s", (member,))
        return None

    def lease_renew(self, member: str, epoch: int, lease_s: float, release: Collection[int]) -> Lease:
        self._flush()
        renewed = self.cur.execute(
            "UPDATE members SET expires_at = now() + make_interval(secs => %s) WHERE gateway_id=%s AND epoch=%s",
            (lease_s, member, epoch),
        ).rowcount
        if renewed != 1:
            return Lease(held=False)
        if release:
            self.cur.execute(
                "UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s AND part = ANY(%s)",
                (member, sorted(release)),
            )
        mine = {
            r[0]
            for r in self._all(
                "UPDATE partitions SET expires_at = now() + make_interval(secs => %s) WHERE owner = %s RETURNING part",
                (lease_s, member),
            )
        }
        rows = self._all("SELECT gateway_id, expires_at > now() FROM members ORDER BY gateway_id")
        live = tuple(r[0] for r in rows if r[1])
        dead = tuple(r[0] for r in rows if not r[1])
        fair = math.ceil(PARTS / max(1, len(live)))
        if len(mine) < fair:
            mine |= {
                r[0]
                for r in self._all(
                    "UPDATE partitions SET owner = %s, expires_at = now() + make_interval(secs => %s)"
                    " WHERE part IN (SELECT part FROM partitions WHERE (owner IS NULL OR expires_at <= now())"
                    " AND part <> ALL(%s) ORDER BY part LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING part",
                    (member, lease_s, sorted(release), fair - len(mine)),
                )
            }
        return Lease(held=True, members=live, parts=frozenset(mine), dead=dead)

    def lease_bury(self, member: str) -> str | None:
        self._flush()
        row = self._one(
            "DELETE FROM members WHERE gateway_id=%s AND expires_at <= now() RETURNING bus_client", (member,)
        )
        if row is None:
            return None
        self.cur.execute("UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s", (member,))
        return str(row[0])

    def lease_leave(self, member: str, epoch: int) -> None:
        self._flush()
        if self.cur.execute("DELETE FROM members WHERE gateway_id=%s AND epoch=%s", (member, epoch)).rowcount:
            self.cur.execute("UPDATE partitions SET owner = NULL, expires_at = NULL WHERE owner = %s", (member,))
