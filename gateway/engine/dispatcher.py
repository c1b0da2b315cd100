"""Pacing (SPEC §10): contacts wait in the store; the dispatcher hands them to a channel when there is room.

Room is the channel's `max_concurrent`/`max_rate` and each campaign's own `max_concurrent`/`max_cps`.
The token bucket is pure (time is an input); the dispatcher is the thin shell that sleeps between turns.
Due retries and operator-ready previews (priority 0) go before new contacts; within a priority, first
come first served.

Several instances (a store that is `shared`, docs/cluster.md): the queue is the store's, and each turn
claims its contacts (`FOR UPDATE SKIP LOCKED`), so a ready contact is started by one instance. Rates
(`max_cps`, `max_mps`, a campaign's `max_cps`) are split evenly between the live members; concurrency
(`max_concurrent_calls`, a campaign's `max_concurrent`) is counted from the store's calls in flight,
under a lock that lets one voice turn of the cluster run at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.domain.campaign import Action, template_pause_reason
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CampaignState, ContactState
from gateway.domain.statuses import Channel
from gateway.engine.engine import Engine, Unit
from gateway.engine.loops import StoreBackoff
from gateway.engine.ports import ChannelPort
from gateway.store import Conflict, Key, StoreError, Timer, Txn
from sip.waiting import wait_event

log = logging.getLogger("telgate.pacing")
EPSILON = 1e-9


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now if self.stamp is None or now > self.stamp else self.stamp

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def take(self, now: float, n: float = 1.0) -> bool:
        self._refill(now)
        if self.tokens >= n - EPSILON:  # float sums of rate*dt fall a hair short of whole tokens
            self.tokens = max(0.0, self.tokens - n)
            return True
        return False

    def wait_s(self, now: float, n: float = 1.0) -> float:
        self._refill(now)
        return 0.0 if self.tokens >= n - EPSILON else (n - self.tokens) / self.rate

    def whole(self, now: float) -> int:
        """Whole tokens available at `now`, spending none."""
        return int(self.available(now) + EPSILON)

    def spend(self, now: float, n: float) -> None:
        """`n` tokens used at `now` (they were counted against `whole(now)` before)."""
        self._refill(now)
        self.tokens = max(0.0, self.tokens - n)


BURST_S = 0.1


@dataclass
class Turn:
    """What one dispatch turn started, counted inside its transaction and spent from the buckets only
    after the commit: a transaction run again (a Conflict, a lost connection) spends nothing twice."""

    at: float  # the turn's clock (seconds)
    started: dict[str, int] = field(default_factory=dict)  # campaign -> contacts started
    allowance: dict[str, int] = field(default_factory=dict)  # campaign -> how many it may start in this turn

    @property
    def taken(self) -> int:
        return sum(self.started.values())


class Dispatcher:
    MAX_TURN = 64

    def __init__(self, engine: Engine, port: ChannelPort) -> None:
        self.engine = engine
        self.port = port
        # several instances: how many share the limits, whether this one may start anything now, and
        # the longest sleep (another instance's contacts become this one's when it dies)
        self.members: Callable[[], int] = lambda: 1
        self.fenced: Callable[[], bool] = lambda: False
        self.max_sleep_s = 30.0
        self.shared = engine.store.shared
        # at most 100 ms worth of dials/sends at once: a carrier that counts CPS sees a steady rate, not
        # max_cps INVITEs in one instant (and the far end's answers do not arrive as one burst either)
        self.bucket = TokenBucket(port.max_rate, burst=max(1.0, min(port.max_rate * BURST_S, float(self.MAX_TURN))))
        self.campaign_buckets: dict[str, TokenBucket] = {}
        self.backoff = StoreBackoff(f"dispatch-{port.channel}")
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        await wait_event(self._wake, max(0.001, seconds))

    def _share(self) -> None:
        """Split the rates between the live members (a change takes effect at once)."""
        self.bucket.rate = self.port.max_rate / self.members()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            if self.fenced():
                await self._sleep(0.5)
                continue
            self._share()
            free = self.port.max_concurrent - self.port.active()
            if free <= 0:
                await self._sleep(1.0)
                continue
            mono = self.engine.clock().timestamp()
            if self.bucket.available(mono) < 1 - EPSILON:
                await self._sleep(self.bucket.wait_s(mono))
                continue
            room = min(free, self.bucket.whole(mono), self.MAX_TURN)
            # the channel's calls per campaign, read here in the loop: the turn runs on the store thread
            on_wire = self.port.active_counts()
            try:
                turn, next_at = await self.engine.execute(functools.partial(self._turn, room=room, on_wire=on_wire))
            except (Conflict, StoreError) as exc:  # nothing was started: the next turn tries again
                await self._sleep(self.backoff.failed(exc))
                continue
            self.backoff.ok()
            self.spend(turn)
            if turn.taken:
                continue
            wait = self.max_sleep_s if next_at is None else (next_at - self.engine.clock()).total_seconds()
            await self._sleep(min(self.max_sleep_s, wait))

    def spend(self, turn: Turn) -> None:
        """After the turn's commit: its dials/sends leave the channel's and their campaigns' buckets."""
        self.bucket.spend(turn.at, turn.taken)
        for campaign_id, n in turn.started.items():
            bucket = self.campaign_buckets.get(campaign_id)
            if bucket is not None:
                bucket.spend(turn.at, n)

    def _campaign_allowance(self, camp: CampaignState, now: float, flying: dict[str, int], here: dict[str, int]) -> int:
        """How many of the campaign's contacts this turn may start: its own max_concurrent less what it
        has on the wire (this instance's: `here`, the channel's counts taken before the turn; in the
        cluster also `flying`, from the store), and its max_cps bucket's whole tokens (read, not spent;
        the rate split between the members)."""
        allowance = self.MAX_TURN
        if camp.max_concurrent is not None:
            on_wire = max(here.get(camp.campaign_id, 0), flying.get(camp.campaign_id, 0))
            allowance = min(allowance, camp.max_concurrent - on_wire)
        if camp.max_cps is not None:
            rate = camp.max_cps / self.members()
            bucket = self.campaign_buckets.get(camp.campaign_id)
            if bucket is None or bucket.rate != rate:
                bucket = self.campaign_buckets[camp.campaign_id] = TokenBucket(rate, max(1.0, rate))
            allowance = min(allowance, bucket.whole(now))
        return max(0, allowance)

    def _turn(self, unit: Unit, room: int, on_wire: dict[str, int] | None = None) -> tuple[Turn, datetime | None]:
        """Inside the transaction: pick ready contacts in order and start them (blacklist, budget checked).
        Nothing outside the transaction changes here (the buckets are spent after the commit): the
        engine may run it again on fresh state. `on_wire`: the channel's attempts in flight per campaign,
        taken in the event loop before the turn (the turn runs on the store thread and reads no channel;
        None: nothing on the wire)."""
        on_wire = on_wire or {}
        txn, now = unit.read, unit.now
        turn = Turn(at=now.timestamp())
        channel = self.port.channel
        skip: set[str] = set()
        templates: dict[tuple[str, str], str | None] = {}
        campaigns: dict[str, CampaignState] = {}
        dialed: dict[str, int] = {}
        flying: dict[str, int] = {}
        if self.shared and channel is Channel.VOICE:  # the cluster's calls, counted one turn at a time
            if not unit.lock_dispatch(channel):  # another instance's turn: look again in a moment
                return turn, now + timedelta(seconds=0.02)
            flying = txn.in_flight_counts(channel)
            room = min(room, self.port.max_concurrent - sum(flying.values()))
            if room <= 0:  # the cluster's calls are at the limit: look again soon (ends elsewhere wake nobody here)
                return turn, now + timedelta(seconds=0.25)
        while turn.taken < room:
            keys: list[Key] = txn.ready_contacts(channel, now, room - turn.taken, frozenset(skip))
            if not keys:
                break
            txn.prefetch(contacts=keys)  # the turn's contacts and their numbers' blacklist entries, read at once
            read = {k: txn.get_contact(k) for k in keys}  # each read once (SQLite parses a row per read)
            txn.prefetch(phones=[c.phone for c in read.values() if c is not None and c.phone])
            for key in keys:
                if key[0] in skip:
                    continue
                camp = campaigns.get(key[0]) or txn.get_campaign(key[0])
                if camp is None:
                    skip.add(key[0])
                    continue
                if key[0] not in turn.allowance:
                    turn.allowance[key[0]] = self._campaign_allowance(camp, turn.at, flying, on_wire)
                if turn.started.get(key[0], 0) >= turn.allowance[key[0]]:
                    skip.add(key[0])
                    continue
                contact = read[key]
                if contact is None:
                    continue
                campaigns[key[0]] = camp
                evidence: dict[str, Any] = {"source": "gateway", "kind": "dial" if channel == "voice" else "send"}
                opted_out = False
                if channel is Channel.WHATSAPP:
                    paused = self._template_paused(unit, contact, templates)
                    if paused is not None:  # Meta paused or disabled the template: the campaign stops sending it
                        unit.campaign_action(key[0], Action.AUTO_PAUSE, reason=paused)
                        skip.add(key[0])
                        continue
                    # a MARKETING template to a number that stopped marketing messages (Meta's user_preferences):
                    # refused before the Cloud API would (131050)
                    opted_out = (
                        contact.template_category == "MARKETING"
                        and bool(contact.phone)
                        and txn.marketing_opted_out(contact.phone or "")
                    )
                    if opted_out:
                        evidence |= {"reason": "marketing_opt_out", "wa_error_code": 131050}
                        unit.after.notes.append(self.engine.recorder.wa_marketing_refused.inc)  # once committed
                signal = Signal(
                    Kind.DIAL_DUE,
                    evidence,
                    blacklisted=opted_out or (bool(contact.phone) and txn.is_blacklisted(contact.phone or "")),
                    contacts_dialed=camp.dialed_contacts + dialed.get(key[0], 0),
                    max_contacts=camp.budget.max_contacts,
                    caller=camp.caller,
                )
                decision = unit.apply(key, signal, current=contact)
                if decision.illegal or not decision.events:
                    unit.dequeue(key)  # never spin on a contact that cannot start
                    continue
                if contact.attempt == 0 and decision.state.attempt == 1:
                    dialed[key[0]] = dialed.get(key[0], 0) + 1
                if decision.state.in_flight:
                    turn.started[key[0]] = turn.started.get(key[0], 0) + 1
        next_at = None if turn.taken else txn.next_ready_at(channel, frozenset())
        return turn, next_at

    @staticmethod
    def _template_paused(unit: Unit, contact: ContactState, seen: dict[tuple[str, str], str | None]) -> str | None:
        """Why the contact's campaign pauses instead of sending its template (domain/campaign.py), or None."""
        template = contact.template or {}
        name = str(template.get("name", ""))
        language = template.get("language")
        code = str(language.get("code", "") if isinstance(language, dict) else language or "")
        if (name, code) not in seen:
            state = unit.read.template_state(name, code)
            seen[(name, code)] = template_pause_reason(name, state[0] if state is not None else None)
        return seen[(name, code)]


def _drop_timer(timer: Timer) -> Callable[[Unit, BaseException], None]:
    def drop(unit: Unit, exc: BaseException) -> None:
        log.error("timer failed to apply, dropped", exc_info=exc, extra={"timer": timer.id})
        unit.fire_timer(timer.id)

    return drop


def _due_timers(txn: Txn, now: datetime) -> list[Timer]:
    return txn.due_timers(now, 256)


class Scheduler:
    """Persisted timers (BCW, ACW, ambiguous sends, campaign start_at) fired once, also after a restart."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._wake = asyncio.Event()
        self.max_sleep_s = 30.0  # several instances: lease_s, so a dead member's timers fire in time

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        from gateway.engine.commands import apply_timer

        backoff = StoreBackoff("scheduler")
        while True:
            self._wake.clear()
            now = self.engine.clock()
            try:
                due = await self.engine.store.read(functools.partial(_due_timers, now=now))
                if due:
                    # a timer whose signal fails to apply (a bug) is fired without it, logged once: a poison
                    # timer would otherwise stop the service at every start (DESIGN habit 15)
                    await asyncio.gather(
                        *(
                            self.engine.submit(functools.partial(apply_timer, timer=t), None, _drop_timer(t))
                            for t in due
                        )
                    )
                    backoff.ok()
                    continue
                next_at = await self.engine.store.read(lambda txn: txn.next_timer_at())
            except (StoreError, Conflict) as exc:
                await wait_event(self._wake, backoff.failed(exc))
                continue
            backoff.ok()
            wait = self.max_sleep_s if next_at is None else (next_at - self.engine.clock()).total_seconds()
            await wait_event(self._wake, min(self.max_sleep_s, max(0.001, wait)))
