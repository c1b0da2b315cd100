"""Membership of the instances that share a store (SPEC §11; docs/cluster.md says why it holds).

Every instance holds a lease in the store (`members`: its id, the epoch of this run, when the lease
expires) and renews it every `lease_s / 3`. With the lease come the outbox partitions it publishes
(`partitions`): each is leased to one member at a time, and a member takes free or expired ones up to
its fair share of the live members (`PARTS / members`, rounded up), and gives back what it holds beyond
that once nothing of it is in flight on the bus. A member whose lease expired is buried by the first
live member that sees it: in one transaction its row goes and SPEC §9's restart rule is applied to the
contacts it left in flight; its partitions expire with it and are taken by the others; its timers and
its queue were in the shared store all along.

A member that cannot renew stops acting on its lease before the store lets anyone else take it: its
lease is taken to end `lease_s` after the renewal was *sent* (the store counts from when it received
it, later), less a tenth for the clocks' rates. Fenced, it publishes nothing and starts no attempt; when
the store answers again it goes on if its row is still its own, and otherwise it stops with LeaseLost
(its contacts were settled by another member; the supervisor starts it again as a new member).
A member buries others only once its own lease has been valid for 2 x `lease_s` without a lapse:
after the store itself was away every lease has expired, and the first member back must not take the
others for dead before they had a lease's time to renew.

On a store one instance has to itself (SQLite), the store answers every renewal with every partition.

The rules of the lease (when to renew, when it is fenced, the fair share of partitions, when the dead
may be buried) are a pure core with a clock input, gateway/cluster/lease.py; this module is its shell: the
store calls, sleeping until the core's timer, and the callbacks of the parts that share by the lease.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from gateway.cluster.lease import MARGIN, LeaseState
from gateway.engine.engine import Engine, Unit
from gateway.store import Lease, Store, StoreError, Txn
from metrics.recorder import Recorder

log = logging.getLogger("telgate.cluster")


class LeaseLost(Exception):
    """Another member buried this one (its lease expired while the store could not be reached)."""


class ClusterError(Exception):
    """The instance cannot join (its gateway.id is held by another running instance)."""


def _join(txn: Txn, member: str, epoch: int, lease_s: float, bus_client: str) -> int | None:
    return txn.lease_join(member, epoch, lease_s, bus_client)


def _renew(txn: Txn, member: str, epoch: int, lease_s: float, release: frozenset[int]) -> Lease:
    return txn.lease_renew(member, epoch, lease_s, release)


def _leave(txn: Txn, member: str, epoch: int) -> None:
    txn.lease_leave(member, epoch)


def _take_over(unit: Unit, member: str) -> tuple[int, str] | None:
    return unit.take_over(member)


class Cluster:
    """The shell around the lease's core (gateway/cluster/lease.py): the store calls, sleeping until the core's
    timer, the callbacks of the parts that share by the lease, and burying the dead it names."""

    MARGIN = MARGIN

    def __init__(
        self,
        engine: Engine,
        store: Store,
        gateway_id: str,
        epoch: int,
        lease_s: float,
        recorder: Recorder,
        bus_client: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.bus_client = bus_client
        self.store = store
        self.gateway_id = gateway_id
        self.epoch = epoch
        self.lease_s = lease_s
        self.recorder = recorder
        self.clock = clock
        self.lease = LeaseState(lease_s)
        self.busy_parts: Callable[[], set[int]] = set  # the bus: partitions with rows in flight
        self.on_change: list[Callable[[], None]] = []
        # a member buried here: its MQTT client id (the app empties and ends the session it left)
        self.on_buried: Callable[[str, str], None] = lambda member, bus_client: None
        self.on_lost: Callable[[], None] = lambda: None  # before LeaseLost is raised (the app stops its bus)

    # -- what the other parts ask --------------------------------------------------------------------
    @property
    def members(self) -> tuple[str, ...]:
        return self.lease.members or (self.gateway_id,)

    @property
    def size(self) -> int:
        """Live members, this one included: the cluster's limits are shared by this many."""
        return self.lease.size

    @property
    def fenced(self) -> bool:
        """The lease may have expired: publish nothing, start no attempt."""
        return self.lease.fenced(self.clock())

    def parts(self) -> frozenset[int]:
        """The outbox partitions to publish now."""
        return self.lease.parts(self.clock())

    # -- the lease -----------------------------------------------------------------------------------
    async def _sleep_until_timer(self) -> None:
        at = self.lease.get_timer()
        if at is not None:
            await asyncio.sleep(max(0.0, at - self.clock()))

    async def join(self) -> None:
        """Register this run; while another run of the same id holds a live lease (a restart after a
        crash: until it expires), wait; after 2 x lease_s of it, ClusterError."""
        self.lease.join_started(self.clock())
        while True:
            other = await self.store.run(
                functools.partial(
                    _join, member=self.gateway_id, epoch=self.epoch, lease_s=self.lease_s, bus_client=self.bus_client
                )
            )
            if other is None:
                break
            if not self.lease.join_refused(self.clock()):
                raise ClusterError(
                    f"gateway.id {self.gateway_id!r} is held by another running instance (epoch {other}):"
                    " give each instance an id of its own"
                )
            log.info("waiting for the lease of this id's previous run to expire", extra={"epoch": other})
            await self._sleep_until_timer()
        await self.renew()

    async def renew(self) -> None:
        """One renewal: sent, answered, and what the answer means carried out."""
        release = self.lease.renewal(self.clock(), self.busy_parts())
        try:
            lease = await self.store.run(
                functools.partial(
                    _renew, member=self.gateway_id, epoch=self.epoch, lease_s=self.lease_s, release=release
                )
            )
        except StoreError:
            self.lease.renew_failed(self.clock())
            raise
        renewed = self.lease.renewed(lease, self.clock())
        if renewed.lost:
            self.on_lost()
            raise LeaseLost(f"{self.gateway_id} (epoch {self.epoch}) was buried by another member")
        self.recorder.cluster_members.set(len(lease.members))
        self.recorder.cluster_partitions.set(len(lease.parts))
        if renewed.changed:
            log.info("lease renewed", extra={"members": list(lease.members), "partitions": len(lease.parts)})
            for callback in self.on_change:
                callback()
        for member in renewed.bury:
            buried = await self.engine.execute(functools.partial(_take_over, member=member))
            if buried is not None:
                settled, bus_client = buried
                self.recorder.cluster_takeovers.inc()
                log.warning("took over a member whose lease expired", extra={"member": member, "contacts": settled})
                self.on_buried(member, bus_client)

    async def run(self) -> None:
        """Renew when the core says (every lease_s / 3; at once after a late answer; lease_s / 10 after a
        failure) until cancelled; a store that does not answer fences this member by itself (time
        passes), LeaseLost ends it."""
        while True:
            await self._sleep_until_timer()
            try:
                await self.renew()
            except StoreError as exc:
                log.warning("lease renewal failed", extra={"detail": str(exc), "fenced": self.fenced})

    async def leave(self) -> None:
        """A stop: the row and the partitions go now, the others take them at their next renewal."""
        self.lease.leave()
        try:
            await self.store.run(functools.partial(_leave, member=self.gateway_id, epoch=self.epoch))
        except StoreError as exc:
            log.warning("could not leave the cluster (the lease will expire)", extra={"detail": str(exc)})
