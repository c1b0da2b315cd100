"""The lease core (gateway/cluster/lease.py) with a fake clock: renewal on time, fencing before the store lets
anyone take the lease, recovery, partitions given back and taken, burying, joining."""

from __future__ import annotations

import pytest

from gateway.cluster.lease import MARGIN, LeaseState, Renewed
from gateway.store import PARTS, Lease

L = 9.0  # lease_s: renew every 3 s, fenced 8.1 s after a renewal was sent
ALL = frozenset(range(PARTS))


def joined(now: float = 0.0, parts: frozenset[int] = ALL, members: tuple[str, ...] = ("a",)) -> LeaseState:
    lease = LeaseState(L)
    lease.join_started(now)
    lease.renewal(now)
    lease.renewed(Lease(True, members, parts), now)
    return lease


def renew(
    lease: LeaseState, sent: float, answered: float | None = None, answer: Lease | None = None
) -> tuple[frozenset[int], Renewed]:
    release = lease.renewal(sent)
    members = lease.members
    result = lease.renewed(answer or Lease(True, members, lease.held), sent if answered is None else answered)
    return release, result


def test_not_joined_is_fenced_and_holds_nothing() -> None:
    lease = LeaseState(L)
    assert lease.fenced(0.0) and lease.parts(0.0) == frozenset() and lease.size == 1
    assert lease.get_timer() is None


def test_renews_every_third_of_the_lease_from_when_the_renewal_was_sent() -> None:
    lease = joined(100.0)
    assert lease.get_timer() == pytest.approx(103.0)
    renew(lease, sent=103.0, answered=103.5)  # a slow answer does not push the next one back
    assert lease.get_timer() == pytest.approx(106.0)
    assert not lease.fenced(106.0) and lease.parts(106.0) == ALL


def test_trusted_for_the_lease_less_the_margin_from_when_it_was_sent() -> None:
    lease = joined(0.0)
    until = L * (1 - MARGIN)  # 8.1 s
    assert lease.valid_until == pytest.approx(until)
    assert not lease.fenced(until - 0.001)
    assert lease.fenced(until) and lease.parts(until) == frozenset()


def test_a_late_renewal_fences_before_the_store_lets_another_member_take_the_lease() -> None:
    # renewals are failing (the store is away): time alone fences the member
    lease = joined(0.0)
    lease.renewal(3.0)
    lease.renew_failed(4.0)
    assert lease.get_timer() == pytest.approx(4.0 + L / 10)
    # the store dates the lease from when it *received* the last renewal (at 0 or later): others may take
    # it from L on; this member stopped a tenth of a lease before that at the latest
    assert lease.fenced(L - MARGIN * L)
    assert lease.valid_until is not None and L - lease.valid_until >= MARGIN * L - 1e-9


def test_a_dead_members_work_is_taken_within_two_leases() -> None:
    # SPEC §11: "a" last renewed at 0 and died; the store lists it dead from L on. "b", held long enough,
    # renews on its own timer (a renewal taking 0.2 s) and buries it at the first renewal past L: by
    # L + L/3 + 0.2, inside 2 x L with two thirds of a lease to spare
    b = joined(-3 * L, members=("a", "b"))
    while True:
        t = b.get_timer()
        assert t is not None
        gone = t + 0.2 >= L
        answer = Lease(True, ("b",) if gone else ("a", "b"), ALL, dead=("a",) if gone else ())
        if renew(b, sent=t, answered=t + 0.2, answer=answer)[1].bury:
            break
    assert t + 0.2 <= L + L / 3 + 0.2 <= 2 * L - 2 * L / 3 + 0.2


def test_an_answer_after_the_lease_ran_out_leaves_it_fenced_until_the_next_one_which_is_due_at_once() -> None:
    lease = joined(0.0)
    renew(lease, sent=3.0, answered=3.0 + L)  # the store answered 9 s later
    assert lease.fenced(12.0)  # trusted until 3 + 8.1: already past
    due = lease.get_timer()
    assert due is not None and due <= 12.0
    renew(lease, sent=12.0, answered=12.2)  # recovered
    assert not lease.fenced(12.2) and lease.parts(12.2) == ALL
    assert lease.valid_until == pytest.approx(12.0 + L * (1 - MARGIN))


def test_recovery_after_failed_renewals() -> None:
    lease = joined(0.0)
    for t in (3.0, 3.9, 4.8, 5.7, 6.6, 7.5, 8.4):
        lease.renewal(t)
        lease.renew_failed(t)
    assert lease.fenced(8.4)
    renew(lease, sent=9.3, answered=9.4)
    assert not lease.fenced(9.4) and lease.parts(9.4) == ALL


def test_lost_when_the_store_says_another_member_buried_it() -> None:
    lease = joined(0.0)
    _, result = renew(lease, sent=3.0, answer=Lease(False))
    assert result.lost
    assert lease.lost and lease.fenced(3.0) and lease.get_timer() is None and lease.parts(3.0) == frozenset()


def test_buries_only_after_holding_its_lease_two_leases_without_a_lapse() -> None:
    lease = joined(0.0, members=("a", "b"))
    dead = Lease(True, ("a",), ALL, dead=("b",))
    t = 0.0
    while t + L / 3 < 2 * L:  # just started: the others get two leases to renew
        t += L / 3
        assert renew(lease, sent=t, answer=dead)[1].bury == ()
    assert renew(lease, sent=2 * L, answer=dead)[1].bury == ("b",)
    # a lapse of its own (the store was away, every lease expired): held again from the late answer on
    assert renew(lease, sent=3 * L, answered=4 * L, answer=dead)[1].bury == ()
    assert renew(lease, sent=4 * L, answer=dead)[1].bury == ()
    assert renew(lease, sent=6 * L - 1, answer=dead)[1].bury == ()  # (a lapse again: 4L + 8.1 < 6L - 1)
    t = 6 * L - 1
    while renew(lease, sent=t, answer=dead)[1].bury == ():
        t += L / 3
    assert t >= 6 * L - 1 + 2 * L - 1e-9


def test_partitions_beyond_the_fair_share_are_withheld_then_given_back_once_idle() -> None:
    lease = joined(0.0)  # alone: all 64
    _, result = renew(lease, sent=3.0, answer=Lease(True, ("a", "b"), ALL))  # a second member joined
    assert result.changed
    assert lease.size == 2 and lease.fair_share() == 32
    # the next renewal withholds the highest 32; 40 still has rows in flight, so it is kept for now
    release = lease.renewal(6.0, busy={40})
    high = frozenset(range(32, 64))
    assert release == high - {40}
    assert lease.parts(6.0) == frozenset(range(32))  # none of the withheld is published meanwhile
    lease.renewed(Lease(True, ("a", "b"), frozenset(range(32)) | {40}), 6.1)
    assert lease.releasing == {40} and lease.parts(6.1) == frozenset(range(32))
    assert lease.renewal(9.0, busy=set()) == {40}  # idle now: given back
    result2 = lease.renewed(Lease(True, ("a", "b"), frozenset(range(32))), 9.1)
    assert lease.releasing == frozenset() and lease.held == frozenset(range(32))
    assert result2.changed and not result2.lost


def test_partitions_taken_from_a_member_that_left() -> None:
    lease = joined(0.0, parts=frozenset(range(32)), members=("a", "b"))
    assert lease.renewal(3.0) == frozenset()  # its fair share: nothing to give back
    result = lease.renewed(Lease(True, ("a",), ALL), 3.1)  # b left: the store hands out its partitions
    assert result.changed and lease.parts(3.1) == ALL and lease.size == 1


def test_an_unchanged_renewal_is_not_a_change() -> None:
    lease = joined(0.0)
    _, result = renew(lease, sent=3.0)
    assert not result.changed


def test_a_failed_renewal_gives_back_the_same_ones_at_the_next() -> None:
    lease = joined(0.0)
    lease.renewed(Lease(True, ("a", "b"), ALL), 0.5)
    release = lease.renewal(3.0)
    lease.renew_failed(3.2)  # the store may or may not have taken it: the next renewal gives them again
    assert lease.renewal(4.1) == release and release


def test_join_refused_is_tried_again_every_quarter_lease_then_given_up_after_two_leases() -> None:
    lease = LeaseState(L)
    lease.join_started(0.0)
    assert lease.get_timer() == 0.0
    t = 0.0
    while lease.join_refused(t):
        assert lease.get_timer() == pytest.approx(t + L / 4)
        t += L / 4
    assert t == pytest.approx(2 * L) and lease.get_timer() is None


def test_leave_fences_and_stops_renewing() -> None:
    lease = joined(0.0)
    lease.leave()
    assert lease.fenced(0.1) and lease.get_timer() is None


def test_a_non_positive_lease_is_refused() -> None:
    with pytest.raises(ValueError, match="lease_s"):
        LeaseState(0)
