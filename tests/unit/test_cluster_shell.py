"""The cluster's shell (gateway/cluster/membership.py) around the lease core, with a fake clock and an in-memory store
that answers as the store's lease calls do: what it sends, what it calls back, when it stops."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from gateway.cluster.membership import Cluster, ClusterError, LeaseLost
from gateway.engine.engine import Engine
from gateway.store import PARTS, Lease, Store, StoreError
from metrics.recorder import Recorder

L = 9.0
ALL = frozenset(range(PARTS))


@dataclass
class FakeStore:
    """Answers `lease_join` with `held_by` (another run's epoch, or None) and `lease_renew` with `answers`
    in turn (a StoreError is raised); records the releases asked for."""

    held_by: list[int | None] = field(default_factory=lambda: [None])
    answers: list[Lease | StoreError] = field(default_factory=list)
    released: list[frozenset[int]] = field(default_factory=list)
    clock: list[float] = field(default_factory=lambda: [0.0])
    took: float = 0.0  # how long each call takes on the fake clock

    def lease_join(self, member: str, epoch: int, lease_s: float, bus_client: str) -> int | None:
        return self.held_by.pop(0) if len(self.held_by) > 1 else self.held_by[0]

    def lease_renew(self, member: str, epoch: int, lease_s: float, release: frozenset[int]) -> Lease:
        self.released.append(release)
        answer = self.answers.pop(0)
        if isinstance(answer, StoreError):
            raise answer
        return answer

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        self.clock[0] += self.took
        return fn(self)


@dataclass
class FakeEngine:
    buried: list[str] = field(default_factory=list)

    def take_over(self, member: str) -> tuple[int, str] | None:
        self.buried.append(member)
        return 3, f"telgate-{member}"

    async def execute(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self)


def shell(store: FakeStore, engine: FakeEngine | None = None) -> Cluster:
    return Cluster(
        cast(Engine, engine or FakeEngine()),
        cast(Store, store),
        "a",
        1,
        L,
        Recorder("test"),
        bus_client="telgate-a",
        clock=lambda: store.clock[0],
    )


async def test_join_renews_at_once_and_publishes_what_it_holds() -> None:
    store = FakeStore(answers=[Lease(True, ("a",), ALL)])
    cluster = shell(store)
    assert cluster.fenced and cluster.parts() == frozenset()
    changes: list[int] = []
    cluster.on_change.append(lambda: changes.append(cluster.size))
    await cluster.join()
    assert not cluster.fenced and cluster.parts() == ALL and changes == [1]
    assert cluster.lease.get_timer() == pytest.approx(L / 3)
    store.clock[0] = L * 0.9  # no renewal since: fenced by time alone
    assert cluster.fenced and cluster.parts() == frozenset()


async def test_a_join_refused_for_two_leases_is_a_configuration_error() -> None:
    store = FakeStore(held_by=[7], took=2 * L)  # the store answers the first attempt two leases later
    cluster = shell(store)
    with pytest.raises(ClusterError, match=r"gateway\.id 'a' is held by another running instance \(epoch 7\)"):
        await cluster.join()
    assert cluster.fenced


async def test_a_failed_renewal_asks_again_in_a_tenth_and_a_later_one_recovers() -> None:
    store = FakeStore(answers=[Lease(True, ("a",), ALL), StoreError("down"), Lease(True, ("a",), ALL)])
    cluster = shell(store)
    await cluster.join()
    store.clock[0] = 3.0
    with pytest.raises(StoreError):
        await cluster.renew()
    assert cluster.lease.get_timer() == pytest.approx(3.0 + L / 10)
    store.clock[0] = 8.5
    assert cluster.fenced
    await cluster.renew()
    assert not cluster.fenced


async def test_buried_by_another_member_calls_on_lost_then_raises_lease_lost() -> None:
    store = FakeStore(answers=[Lease(True, ("a",), ALL), Lease(False)])
    cluster = shell(store)
    lost: list[bool] = []
    cluster.on_lost = lambda: lost.append(True)
    await cluster.join()
    with pytest.raises(LeaseLost):
        await cluster.renew()
    assert lost == [True] and cluster.fenced


async def test_the_dead_are_buried_once_held_for_two_leases_and_their_sessions_handed_on() -> None:
    dead = Lease(True, ("a",), ALL, dead=("b",))
    answers: list[Lease | StoreError] = [Lease(True, ("a", "b"), frozenset(range(32))), *[dead] * 6]
    store = FakeStore(answers=answers)
    engine = FakeEngine()
    cluster = shell(store, engine)
    adopted: list[tuple[str, str]] = []
    cluster.on_buried = lambda member, bus_client: adopted.append((member, bus_client))
    await cluster.join()
    for _ in range(5):  # renewing on its timer; just started: the others get two leases
        timer = cluster.lease.get_timer()
        assert timer is not None
        store.clock[0] = timer
        await cluster.renew()
    assert store.clock[0] == pytest.approx(5 * L / 3) and engine.buried == []
    store.clock[0] = 2 * L
    await cluster.renew()
    assert engine.buried == ["b"] and adopted == [("b", "telgate-b")]


async def test_partitions_beyond_the_fair_share_are_given_back_once_idle() -> None:
    store = FakeStore(
        answers=[
            Lease(True, ("a", "b"), ALL),
            Lease(True, ("a", "b"), frozenset(range(32)) | {63}),
            Lease(True, ("a", "b"), frozenset(range(32))),
        ]
    )
    cluster = shell(store)
    busy = {63}
    cluster.busy_parts = lambda: set(busy)
    await cluster.join()  # the join's renewal: the member count was not known yet, nothing withheld
    store.clock[0] = 3.0
    await cluster.renew()
    assert store.released[-1] == frozenset(range(32, 63)) and cluster.parts() == frozenset(range(32))
    busy.clear()
    store.clock[0] = 6.0
    await cluster.renew()
    assert store.released[-1] == {63} and cluster.parts() == frozenset(range(32))
