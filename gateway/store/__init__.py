"""The store: contacts, campaigns, events + outbox, queue, timers, blacklist, command ids, wamids,
inbound message ids, marketing opt-outs and template states.

`Store.run(fn)` runs `fn(txn)` as one transaction; the engine batches many decisions into one `run`
(group commit). `Txn.put_contact` is a compare-and-set on `sequence` (SPEC §11): it returns False when
another writer moved the contact first, and the engine decides again.

Two implementations behind the same protocols, chosen by `store.url`: `sqlite:///path` (sqlite/, the
embedded default) and `postgresql://…` (postgres/). Both apply their versioned schema migrations at
`open()` (migrate.py) and prune history older than `store.retention_days` (`Txn.prune`).
docs/store.md says how they differ inside and why.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

from gateway.domain.effects import TimerKind
from gateway.domain.limits import NumberHistory
from gateway.domain.state import CampaignState, ContactState
from gateway.domain.statuses import STATUSES, Channel

R = TypeVar("R")
Key = tuple[str, str]  # (campaign_id, contact_id)

# every status that is final on some channel (none is final on one and open on another)
FINAL_STATUSES: tuple[str, ...] = tuple(
    sorted({str(status) for table in STATUSES.values() for status, (_, _, final) in table.items() if final})
)


# The outbox is cut into PARTS partitions; each is published by one instance at a time (its lease holder),
# in id order (docs/cluster.md says why that keeps every contact's events in `sequence` order). A row's
# partition is written with it, so the number is fixed for the life of a store: never change it.
PARTS = 64


def partition(key: str) -> int:
    """The outbox partition of a contact (`campaign_id/contact_id`), a campaign or a command id."""
    return zlib.crc32(key.encode()) % PARTS


def contact_partition(key: Key) -> int:
    return partition(f"{key[0]}/{key[1]}")


@dataclass(frozen=True, slots=True)
class Lease:
    """What one renewal of an instance's lease found (Txn.lease_renew)."""

    held: bool  # False: this member's row is gone or has another epoch (another instance buried it)
    members: tuple[str, ...] = ()  # live members, this one included
    parts: frozenset[int] = field(default_factory=frozenset)  # the outbox partitions this member holds now
    dead: tuple[str, ...] = ()  # members whose lease expired, not buried yet


def count_in_cache(campaigns: dict[str, CampaignState | None], campaign_id: str, counter: str, n: float) -> None:
    """A counter moved without an answer (`Txn.count_dialed`, `count_talk`): a campaign the transaction
    read keeps its place in the transaction's cache with the counter moved (dropped, the engine's look at
    it once per ended call would read and parse it again each time)."""
    camp = campaigns.get(campaign_id)
    if camp is not None:
        campaigns[campaign_id] = camp.model_copy(update={counter: getattr(camp, counter) + n})


NUMBER_FACTS = ("attempt", "refusal", "opt_out", "abandon")  # what `Txn.note_number` keeps of a number


def history_from_rows(rows: Iterable[tuple[str, datetime]]) -> NumberHistory:
    """A number's facts (kind, at) as the caps read them (gateway/domain/limits.py): every attempt, and the
    latest refusal, opt-out and abandon."""
    attempts: list[datetime] = []
    last: dict[str, datetime] = {}
    for kind, at in rows:
        if kind == "attempt":
            attempts.append(at)
        elif kind not in last or at > last[kind]:
            last[kind] = at
    return NumberHistory(
        attempts=tuple(sorted(attempts)),
        last_refusal=last.get("refusal"),
        last_opt_out=last.get("opt_out"),
        last_abandon=last.get("abandon"),
    )


class StoreError(Exception):
    """The store failed (disk, lock, corruption): a local fault, not the caller's input."""


class Conflict(Exception):
    """Compare-and-set lost: another writer moved the contact; decide again on fresh state."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    created_at: float
    part: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An outbox row that can never be published (the client refused it, or the broker answered its
    PUBACK with a failure reason), moved aside with why (`Txn.outbox_dead_letter`)."""

    id: int  # the outbox row's id
    topic: str
    payload: bytes
    retain: bool
    correlation: bytes | None
    part: int
    reason: str
    created_at: float  # when the row was written (epoch seconds)
    dead_at: float  # when it was moved


@dataclass(frozen=True, slots=True)
class Timer:
    id: int
    kind: TimerKind
    campaign_id: str
    contact_id: str | None
    due_at: datetime


class Reads(Protocol):
    """What a transaction can read. `Store.read` hands out only this; the engine's pieces of work read
    through it (`Unit.read`) and leave every write to gateway/engine/commit.py."""

    def get_contact(self, key: Key) -> ContactState | None: ...

    def ready_contacts(self, channel: Channel, now: datetime, limit: int, skip: frozenset[str]) -> list[Key]: ...

    def next_ready_at(self, channel: Channel, skip: frozenset[str]) -> datetime | None: ...

    def in_flight_contacts(self, owner: str) -> list[Key]: ...

    def unfinished_contacts(self, campaign_id: str) -> list[Key]: ...

    def campaigns_with_channel(self, channel: Channel, status: str) -> list[str]: ...

    def counts(self, campaign_id: str) -> dict[str, int]: ...

    def all_counts(self) -> list[tuple[str, str, str, int]]: ...

    def events(self, key: Key) -> list[bytes]: ...

    def outbox_fetch(
        self, after_id: int, limit: int, parts: Collection[int] | None = None, skip: Collection[int] = ()
    ) -> list[OutboxRow]:
        """Up to `limit` pending rows after `after_id` in id order, of `parts` only when given, none of
        `skip` (rows the publisher has on the wire already)."""
        ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest `limit` dead letters, newest first (moved last, then highest id)."""
        ...

    def in_flight_counts(self, channel: Channel) -> dict[str, int]:
        """Contacts of `channel` in flight (on the wire) per campaign, across every instance."""
        ...

    def outbox_stats(self) -> tuple[int, float | None]: ...

    def due_timers(self, now: datetime, limit: int) -> list[Timer]: ...

    def next_timer_at(self) -> datetime | None: ...

    def get_campaign(self, campaign_id: str) -> CampaignState | None: ...

    def is_blacklisted(self, phone: str) -> bool: ...

    def number_history(self, phone: str, since: datetime) -> NumberHistory:
        """What happened to `phone` (E.164 with +) at or after `since`, over every campaign
        (`Txn.note_number`; this transaction's notes included). On a store several instances share, it
        also holds the number until this transaction ends: another instance's `number_history` of it
        waits, so two transactions cannot both read a history without the other's attempt and both pass
        a cap (docs/lawful-calling.md)."""
        ...

    def get_command(self, command_id: str) -> bytes | None: ...

    def lookup_wamid(self, wamid: str) -> Key | None: ...

    # -- what customers and Meta send to the business's number (issue 22) -----------------------------
    def marketing_opted_out(self, phone: str) -> bool:
        """`phone` (E.164 with +, as the blacklist keys it) pressed Meta's "stop marketing messages" and
        has not resumed since (`Txn.set_marketing_opt_out`)."""
        ...

    def template_state(self, name: str, language: str) -> tuple[str, str | None] | None:
        """(status, reason) Meta last gave for template `name` in `language`, else for `name` in every
        language (stored under language ""), else None."""
        ...

    def latest_contact_by_phone(self, channel: str, phone: str) -> Key | None:
        """The most recently created contact on `channel` whose number is `phone` (E.164 with +) and
        whose campaign is `in_progress`: reply matching by sender. Ties (one intake) go to the highest
        (campaign_id, contact_id)."""
        ...

    def prefetch(
        self, contacts: Collection[Key] = (), commands: Collection[str] = (), phones: Collection[str] = ()
    ) -> None:
        """A hint: these contacts, command ids and blacklist entries are about to be read. A store whose
        reads are round trips (PostgreSQL) reads them in one query each, so a batch of hundreds of
        decisions costs a handful of round trips instead of several per contact; SQLite reads a local
        file and ignores it. Changes nothing that a later read would see."""
        ...


class Txn(Reads, Protocol):
    """A write transaction: the reads, and the writes gateway/engine/commit.py makes of a decision."""

    def put_contact(
        self, state: ContactState, expected_sequence: int, owner: str | None, ready: tuple[datetime, int] | None = None
    ) -> bool:
        """Write `state` if the stored sequence is `expected_sequence` (0: a new contact, which may come
        with its place in the dispatch queue, `ready` = (ready_at, priority))."""
        ...

    def set_ready(self, key: Key, ready_at: datetime | None, priority: int = 1) -> None: ...

    def add_event(self, key: Key, topic: str, payload: bytes) -> None: ...

    def record(self, key: Key, payload: bytes) -> None: ...

    def add_outbox(
        self,
        topic: str,
        payload: bytes,
        retain: bool = False,
        correlation: bytes | None = None,
        part_key: str | None = None,
    ) -> None:
        """A message that is no contact's event; its partition is `part_key`'s (default: the topic's)."""
        ...

    def outbox_delete(self, ids: list[int]) -> None: ...

    def outbox_dead_letter(self, moves: Collection[tuple[int, str]]) -> list[int]:
        """Move pending outbox rows (id, reason) to the dead letters, in this transaction: out of the
        outbox (a contact's event stays in its history, like a published one) and into `dead_letters`
        with the reason and the time. A row no longer pending (published, or moved already: by another
        member that held its partition, say) is left as it is. The ids moved, in id order."""
        ...

    def add_timer(self, kind: TimerKind, campaign_id: str, contact_id: str | None, due_at: datetime) -> None: ...

    def cancel_timers(self, key: Key) -> None: ...

    def delete_timer(self, timer_id: int) -> bool: ...

    def put_campaign(self, state: CampaignState, created: bool = False) -> None:
        """Status and settings. `created`: a campaign this transaction read as missing — Conflict when
        another instance created it meanwhile (decide again)."""
        ...

    def bump_campaign(self, campaign_id: str, dialed: int = 0, talk_s: float = 0.0) -> tuple[float, float | None]: ...

    def count_dialed(self, campaign_id: str, n: int = 1) -> None:
        """`bump_campaign(dialed=n)` whose answer nobody reads: a store may send it with its other writes."""
        ...

    def count_talk(self, campaign_id: str, seconds: float) -> None:
        """`bump_campaign(talk_s=seconds)` whose answer nobody reads (the campaign has no talk budget)."""
        ...

    def blacklist(self, phone: str, add: bool) -> None: ...

    def put_command(self, command_id: str, result: bytes) -> None: ...

    def note_number(self, phone: str, kind: str, at: datetime, campaign_id: str) -> None:
        """A fact about `phone` for the caps over every campaign: `kind` is one of NUMBER_FACTS."""
        ...

    def map_wamid(self, wamid: str, key: Key) -> None: ...

    def note_inbound(self, wamid: str, phone_number_id: str, now: datetime) -> bool:
        """An inbound message's wamid: True the first time it is seen, False when it was noted before —
        by a committed transaction, another instance's, or this one (two identical messages in one POST).
        Kept `store.retention_days` from `now` (`prune`)."""
        ...

    def set_marketing_opt_out(self, phone: str, stop: bool, now: datetime) -> None:
        """Meta's `user_preferences`: `stop` puts `phone` (E.164 with +) on the marketing opt-out list
        (kept with the time it first stopped), resume (`stop` False) takes it off."""
        ...

    def set_template_state(self, name: str, language: str, status: str, reason: str | None, now: datetime) -> None:
        """Meta's `message_template_status_update` for template `name` in `language` ("": every language
        of the name); the last one written stands."""
        ...

    # -- several instances (docs/cluster.md); on SQLite one instance holds everything ------------------
    def lock_dispatch(self, channel: Channel) -> bool:
        """Until this transaction ends, no other instance's dispatch turn for `channel` runs (the
        cluster's concurrency limits are counted from the store under it). Never waits: False when
        another instance's turn holds it (then this turn starts nothing and looks again soon)."""
        ...

    def lock_campaign(self, campaign_id: str) -> CampaignState | None:
        """The campaign as last committed, locked against other instances' campaign decisions until
        this transaction ends (a campaign decision is made on the state it replaces)."""
        ...

    def notify(self, payload: bytes) -> None:
        """Tell every instance, once this transaction commits (the owner of a call carries out a cancel
        another instance decided)."""
        ...

    def lease_join(self, member: str, epoch: int, lease_s: float, bus_client: str = "") -> int | None:
        """Register `member` under `epoch` (with the MQTT client id of its session); None, or the epoch of
        another run of the same id whose lease has not expired (then nothing is written)."""
        ...

    def lease_renew(self, member: str, epoch: int, lease_s: float, release: Collection[int]) -> Lease:
        """Extend this member's lease and its partitions', give up `release`, take free or expired
        partitions up to its fair share of the live members."""
        ...

    def lease_bury(self, member: str) -> str | None:
        """Delete a member whose lease expired; for the one transaction that did it (it applies the
        restart rule to the member's contacts) the MQTT client id the member registered, else None."""
        ...

    def lease_leave(self, member: str, epoch: int) -> None:
        """A member that stops: its row and its partitions' leases go at once."""
        ...

    def prune(self, older_than: datetime, numbers_older_than: datetime | None = None) -> dict[str, int]:
        """Delete event history (messages no longer pending), command ids, wamids and inbound message
        ids written before `older_than`, and dead letters moved before it (SPEC §11:
        `store.retention_days`); with `numbers_older_than`, the number history (the caps' facts) before
        that; the rows deleted per table."""
        ...


class Store(Protocol):
    async def open(self) -> None:
        """Connect and apply the missing schema migrations (StoreError when it cannot)."""
        ...

    async def close(self) -> None: ...
    async def run(self, fn: Callable[[Txn], R]) -> R: ...

    async def read(self, fn: Callable[[Reads], R]) -> R:
        """Run `fn(txn)` as a read-only transaction on a connection of its own (one consistent snapshot),
        beside the writer instead of behind it. A write inside it raises StoreError. For what decides
        nothing: gauges, the HTTP read API, the outbox publisher's fetch, the scheduler's look-ups."""
        ...

    async def published(self, ids: list[int]) -> None:
        """Take outbox rows the broker acknowledged out of the outbox (`Txn.outbox_delete` in a transaction
        of its own). Idempotent, so a store may run it beside the writer, on a connection of its own."""
        ...

    @property
    def is_open(self) -> bool:
        """The store can take a transaction now (/readyz): False while closed or disconnected."""
        ...

    @property
    def shared(self) -> bool:
        """Several instances may write this store at once (PostgreSQL): outbox ids then need not commit
        in id order, and the publisher cannot follow a cursor (docs/cluster.md)."""
        ...

    def notifications(self) -> AsyncIterator[bytes]:
        """What other instances `notify`; never yields on a store one instance has to itself."""
        ...

    @property
    def migrated(self) -> list[int]:
        """The schema versions the last `open()` applied (empty when the schema was up to date)."""
        ...


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unsupported store url {url.split(':', 1)[0]}:// (this build has sqlite:/// and postgresql://)")
