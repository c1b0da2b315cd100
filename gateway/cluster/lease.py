"""The lease of one member of a cluster, as a pure core: time is an input, the next renewal an output.

No store, no asyncio, no clock here (DESIGN habit 2): every call takes `now` (seconds on one monotonic
clock, the shell's), the results of the store's `lease_join` / `lease_renew` are fed in, and the core says
when it next needs a renewal (`get_timer()`), whether this member is fenced at `now`, which outbox
partitions it publishes and which dead members it may bury. `gateway/cluster/membership.py` is the shell: it makes
the store calls and sleeps until the core's timer. docs/cluster.md says why the rules below hold.

The rules:
- **Renew every `lease_s / 3`**, counted from when the last renewal was *sent*; a renewal that failed
  (the store did not answer) is tried again `lease_s / 10` later; one answered after the lease ran out
  is followed by another at once.
- **Fencing.** A renewal is trusted until `lease_s * (1 - MARGIN)` after it was *sent*. The store dates
  the lease from when it *received* the renewal (later) and lets others take it `lease_s` after that, so
  a member stops acting on its lease at least `MARGIN * lease_s` (a tenth: it covers the two clocks'
  rates) before any other member can see it expired. From `valid_until` on, until a renewal is answered,
  the member is fenced: it publishes no partition and starts no attempt.
- **Others take over within 2 x lease_s** (SPEC §11): a dead member's lease ends at most `lease_s` after
  its last renewal reached the store; a live member renews every `lease_s / 3` and buries whom the store
  lists as dead, so within `lease_s + lease_s / 3` plus one renewal's round trip: `2/3 * lease_s` to spare.
- **A member buries only after holding its lease 2 x lease_s without a lapse.** Just started, or back from
  a lapse of its own (the store was away: every lease expired meanwhile), it gives the others two leases
  to renew before it takes anyone for dead.
- **Partitions: a fair share.** A member holds at most `ceil(PARTS / live members)`; what it holds beyond
  that it withholds from publishing (highest first) and gives back in a renewal once nothing of it is in
  flight on the bus (`busy`). The store hands out free or expired ones up to the fair share.
- **Lost.** A renewal the store answers with `held=False` (the row is gone or has another epoch: another
  member buried this one) is final: the member is fenced for good and must stop (`Renewed.lost`).
- **Joining.** While another run of the same id holds a live lease (a restart right after a crash) the
  join is refused; it is tried again every `lease_s / 4` until 2 x `lease_s` have passed, then given up
  (two live processes with one id: a configuration error).
"""

from __future__ import annotations

import math
from collections.abc import Set
from dataclasses import dataclass

from gateway.store import PARTS, Lease

MARGIN = 0.1  # of lease_s: a renewal is trusted for lease_s less this, from when it was sent


@dataclass(frozen=True, slots=True)
class Renewed:
    """What one answered renewal means for the shell."""

    lost: bool = False  # another member buried this one: stop (LeaseLost)
    changed: bool = False  # the live members or the partitions held moved: tell who shares by them
    bury: tuple[str, ...] = ()  # dead members this one may take over now


class LeaseState:
    """One member's lease. Calls: `join_started(now)`, then `join_refused(now)` for each refused join;
    then for each renewal `renewal(now, busy)` -> the partitions to give back, and `renewed(lease, now)`
    with the store's answer or `renew_failed(now)`; `leave()` at a stop."""

    def __init__(self, lease_s: float, parts_total: int = PARTS) -> None:
        if lease_s <= 0:
            raise ValueError(f"lease_s must be > 0, not {lease_s}")
        self.lease_s = lease_s
        self.parts_total = parts_total
        self.members: tuple[str, ...] = ()
        self.held: frozenset[int] = frozenset()  # the partitions the store says this member holds
        self.releasing: frozenset[int] = frozenset()  # held, withheld from publishing, given back when idle
        self.lost = False
        self._valid_until: float | None = None  # None: no lease (not joined, left, or lost)
        self._held_since: float | None = None  # since when the lease has been valid without a lapse
        self._join_deadline: float | None = None
        self._sent: float | None = None  # the renewal in flight: when it was sent
        self._release: frozenset[int] = frozenset()  # the renewal in flight: what it gives back
        self._timer: float | None = None

    # -- what the other parts ask --------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Live members, this one included (at least 1): the cluster's limits are shared by this many."""
        return max(1, len(self.members))

    @property
    def valid_until(self) -> float | None:
        return self._valid_until

    def fenced(self, now: float) -> bool:
        """The lease may have expired: publish nothing, start no attempt."""
        return self._valid_until is None or now >= self._valid_until

    def parts(self, now: float) -> frozenset[int]:
        """The outbox partitions to publish at `now`."""
        return frozenset() if self.fenced(now) else self.held - self.releasing

    def fair_share(self) -> int:
        return math.ceil(self.parts_total / self.size)

    def get_timer(self) -> float | None:
        """When the next join attempt or renewal is due (None: nothing to do — lost or left)."""
        return self._timer

    # -- joining -------------------------------------------------------------------------------------
    def join_started(self, now: float) -> None:
        self._join_deadline = now + 2 * self.lease_s
        self._timer = now

    def join_refused(self, now: float) -> bool:
        """Another run of this id holds a live lease: True to try again at `get_timer()`, False to give up
        (2 x lease_s of it)."""
        if self._join_deadline is None:
            self._join_deadline = now + 2 * self.lease_s
        if now >= self._join_deadline:
            self._timer = None
            return False
        self._timer = now + self.lease_s / 4
        return True

    # -- renewing ------------------------------------------------------------------------------------
    def renewal(self, now: float, busy: Set[int] = frozenset()) -> frozenset[int]:
        """A renewal is sent at `now`: the partitions it gives back (withheld ones with nothing in
        flight). Beyond the fair share, the highest held are withheld from publishing from now on."""
        kept = self.held - self.releasing
        surplus = len(kept) - self.fair_share()  # those already withheld do not count twice
        if surplus > 0:
            self.releasing |= frozenset(sorted(kept, reverse=True)[:surplus])
        self._sent = now
        self._release = frozenset(self.releasing - busy)
        return self._release

    def renewed(self, lease: Lease, now: float) -> Renewed:
        """The store answered, at `now`, the renewal of the last `renewal()`."""
        sent = now if self._sent is None else self._sent
        released, self._sent, self._release = self._release, None, frozenset()
        lapsed = self.fenced(now)  # answered after the lease ran out (the store was away meanwhile)
        if not lease.held:
            self.lost = True
            self._valid_until = None
            self._timer = None
            return Renewed(lost=True)
        self._join_deadline = None
        self._valid_until = sent + self.lease_s * (1 - MARGIN)
        if lapsed or self._held_since is None:  # held again from now on: two leases before it buries anyone
            self._held_since = now
        changed = lease.parts != self.held or lease.members != self.members
        self.releasing = (self.releasing - released) & lease.parts
        self.held, self.members = lease.parts, lease.members
        # the next one lease_s / 3 after this one was sent: at once when that is past (a late answer)
        self._timer = sent + self.lease_s / 3
        bury = lease.dead if now - self._held_since >= 2 * self.lease_s else ()
        return Renewed(changed=changed, bury=tuple(bury))

    def renew_failed(self, now: float) -> None:
        """The store did not answer the renewal: try again lease_s / 10 from now. Time alone fences."""
        self._sent, self._release = None, frozenset()
        self._timer = now + self.lease_s / 10

    def leave(self) -> None:
        """A stop: no lease from now on."""
        self._valid_until = None
        self._timer = None
