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

Lawful calling (docs/lawful-calling.md): a voice campaign with a `window` or `limits` hands the domain
its window, its caps and the number's history over every campaign (read in the turn's transaction, which
on PostgreSQL holds the number until it commits) with every DIAL_DUE; the domain holds a dial back
(`retry_scheduled` with `retry_at`, its row queued for then) or places it. Every dial — a first one, a
retry, one after a restart or a resume, any instance's — is a DIAL_DUE of this turn.

Predictive campaigns are paced (gateway/domain/pacer.py): each campaign's `PredictivePacer` lives in the
event loop and hears the campaign's committed status changes (`Writer.watchers`); after each turn it says
how many calls the next turn may place, from the figures the turn read in its transaction (operators,
operators connected, calls in flight). A turn that meets a predictive contact beyond that allowance asks
the domain what the dial would do (decide() is pure): a dial that would be held back, blacklisted or
refused is applied, one that would ring waits for the pacer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.domain import pacer as pacing
from gateway.domain.abandonment import AbandonRate
from gateway.domain.campaign import Action, abandon_rate, template_pause_reason
from gateway.domain.decide import EventDraft, decide
from gateway.domain.limits import Limits
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CampaignState, ContactState, Mode
from gateway.domain.statuses import Channel, Status
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
PACE_TICK_S = 0.5  # a predictive campaign the pacer holds back is looked at again this often (at least)
CONNECTED = (Status.CALL_IN_PROGRESS, Status.ACW)  # an operator has the call
RINGING_OR_WAITING = (Status.CALLING, Status.AWAITING_OPERATOR)  # calls the pacer counts in flight


def lookback(limits: Limits) -> timedelta:
    """How far back a number's history must be read for every rule of `limits` to be exact."""
    days = [
        limits.per_days if limits.max_attempts is not None else 0.0,
        limits.after_refusal_days or 0.0,
        limits.after_opt_out_days or 0.0,
        (limits.after_abandon_h or 0.0) / 24,
    ]
    return timedelta(days=max(days))


@dataclass(frozen=True, slots=True)
class PaceInputs:
    """A predictive campaign's figures, read in a turn's transaction, for its pacer in the event loop."""

    operators: int  # the campaign's `operators`, else the operators signalled available
    busy: int  # operators with a call: the campaign's contacts in call_in_progress or acw
    in_flight: int  # its calls ringing or answered and waiting for an operator
    settings: pacing.PacerSettings
    history: AbandonRate  # the campaign's rolling abandonment count (a new pacer starts from it)


def declares_operators(camp: CampaignState) -> bool:
    """A predictive campaign is paced by its operators once it says how many it has (`operators`) or one
    signalled `available`. One that never did is paced as before the pacer, by its `max_cps` and
    `max_concurrent` (the PBX's queue takes its calls): an upgrade does not stop it (docs/lawful-calling.md)."""
    return camp.operators is not None or bool(camp.operators_online)


def pace_inputs(camp: CampaignState, counts: dict[str, int]) -> PaceInputs:
    settings = pacing.PacerSettings(
        max_abandon_rate=camp.max_abandon_rate if camp.max_abandon_rate is not None else 0.03,
        abandon_after_s=camp.abandon_after_s,
        abandon_window=camp.abandon_window,
        min_answers=camp.abandon_min_answers,
    )
    return PaceInputs(
        operators=camp.operators if camp.operators is not None else len(camp.operators_online),
        busy=sum(counts.get(s, 0) for s in CONNECTED),
        in_flight=sum(counts.get(s, 0) for s in RINGING_OR_WAITING),
        settings=settings,
        history=abandon_rate(camp),
    )


def observations(state: ContactState, draft: EventDraft, now: datetime) -> list[pacing.Observation]:
    """What a predictive contact's committed status change tells its campaign's pacer."""
    call = f"{state.contact_id}#{draft.attempt}"
    old, new = draft.previous_status, draft.status
    if new is Status.CALLING:
        return [pacing.Placed(call, now)]
    if old is Status.CALLING:
        if new is Status.AWAITING_OPERATOR:
            return [pacing.Answered(call, now, human=True)]
        if new is Status.CALL_IN_PROGRESS:  # connected on answer
            return [pacing.Answered(call, now, human=True), pacing.Connected(call, now)]
        return [pacing.NotAnswered(call, now)]  # no answer, busy, failed, a machine hung up on
    if old is Status.AWAITING_OPERATOR:
        if new is Status.CALL_IN_PROGRESS:
            return [pacing.Connected(call, now)]
        if new is Status.ABANDONED:
            return [pacing.Abandoned(call, now)]
        return [pacing.Left(call, now)]
    if old is Status.CALL_IN_PROGRESS:
        ended: list[pacing.Observation] = [pacing.CallEnded(call, now)]
        return ended if new is Status.ACW else [*ended, pacing.Freed(call, now)]
    if old is Status.ACW:
        return [pacing.Freed(call, now)]
    return []


@dataclass
class Turn:
    """What one dispatch turn started, counted inside its transaction and spent from the buckets only
    after the commit: a transaction run again (a Conflict, a lost connection) spends nothing twice."""

    at: float  # the turn's clock (seconds)
    started: dict[str, int] = field(default_factory=dict)  # campaign -> contacts started
    allowance: dict[str, int] = field(default_factory=dict)  # campaign -> how many it may start in this turn
    paced: dict[str, PaceInputs] = field(default_factory=dict)  # predictive campaigns met: their figures
    held_by_pacer: set[str] = field(default_factory=set)  # predictive campaigns with dials left for the pacer

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
        # predictive pacing, in the event loop: a pacer per campaign, and what each may place in the next
        # turn with the calls in flight that figure counted (the turn takes off what others placed since)
        self.pacers: dict[str, pacing.PredictivePacer] = {}
        self.pace: dict[str, tuple[int, int]] = {}
        if port.channel is Channel.VOICE:
            engine.writer.watchers.append(self.observe)

    def observe(self, state: ContactState, draft: EventDraft, now: datetime) -> None:
        """A committed status change (after the commit, in the event loop): its campaign's pacer hears it."""
        if state.mode is not Mode.PREDICTIVE:
            return
        pacer = self.pacers.get(state.campaign_id)
        if pacer is not None:
            for obs in observations(state, draft, now):
                pacer.observe(obs)

    def _repace(self, turn: Turn, now: datetime) -> bool:
        """After a turn's commit: each predictive campaign it met gets the pacer's figure for the next turn.
        True when one the turn held back may place a call now."""
        pace: dict[str, tuple[int, int]] = {}
        for campaign_id, inputs in turn.paced.items():
            pacer = self.pacers.get(campaign_id)
            if pacer is None:
                pacer = self.pacers[campaign_id] = pacing.PredictivePacer(inputs.settings, inputs.history)
            elif pacer.settings != inputs.settings:
                pacer.settings = inputs.settings
            in_flight = inputs.in_flight + turn.started.get(campaign_id, 0)
            free = max(0, inputs.operators - inputs.busy)
            pace[campaign_id] = (pacer.calls_to_place(now, free, inputs.operators, in_flight), in_flight)
        self.pace = pace
        return any(pace.get(c, (0, 0))[0] > 0 for c in turn.held_by_pacer)

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
                turn, next_at = await self.engine.execute(
                    functools.partial(self._turn, room=room, on_wire=on_wire, pace=dict(self.pace))
                )
            except (Conflict, StoreError) as exc:  # nothing was started: the next turn tries again
                await self._sleep(self.backoff.failed(exc))
                continue
            self.backoff.ok()
            self.spend(turn)
            if self._repace(turn, self.engine.clock()) or turn.taken:
                continue
            wait = self.max_sleep_s if next_at is None else (next_at - self.engine.clock()).total_seconds()
            if turn.held_by_pacer:  # the pacer is asked again soon (calls end and operators free up)
                wait = min(wait, PACE_TICK_S) if wait > 0 else PACE_TICK_S
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

    def _turn(
        self,
        unit: Unit,
        room: int,
        on_wire: dict[str, int] | None = None,
        pace: dict[str, tuple[int, int]] | None = None,
    ) -> tuple[Turn, datetime | None]:
        """Inside the transaction: pick ready contacts in order and start them (blacklist, budget, window
        and caps checked by the domain). Nothing outside the transaction changes here (the buckets are
        spent and the pacers asked after the commit): the engine may run it again on fresh state.
        `on_wire`: the channel's attempts in flight per campaign, taken in the event loop before the turn
        (the turn runs on the store thread and reads no channel; None: nothing on the wire). `pace`: per
        predictive campaign, the calls its pacer allows and the calls in flight it counted then."""
        on_wire = on_wire or {}
        pace = pace or {}
        paced: dict[str, int] = {}  # predictive campaign -> calls it may still place in this turn
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
                lawful: dict[str, Any] = {}
                if channel is Channel.VOICE and (camp.window is not None or camp.limits is not None):
                    lawful = {"window": camp.window, "limits": camp.limits}
                    if camp.limits is not None and contact.phone:  # the number held until this commits
                        lawful["history"] = txn.number_history(contact.phone, now - lookback(camp.limits))
                signal = Signal(
                    Kind.DIAL_DUE,
                    evidence,
                    blacklisted=opted_out or (bool(contact.phone) and txn.is_blacklisted(contact.phone or "")),
                    contacts_dialed=camp.dialed_contacts + dialed.get(key[0], 0),
                    max_contacts=camp.budget.max_contacts,
                    caller=camp.caller,
                    **lawful,
                )
                if channel is Channel.VOICE and contact.mode is Mode.PREDICTIVE and declares_operators(camp):
                    if key[0] not in turn.paced:
                        inputs = turn.paced[key[0]] = pace_inputs(camp, txn.counts(key[0]))
                        allowed, counted = pace.get(key[0], (0, inputs.in_flight))
                        # calls placed since the pacer's figure (another instance's, in a cluster) count
                        paced[key[0]] = allowed - max(0, inputs.in_flight - counted)
                    if turn.started.get(key[0], 0) >= paced[key[0]] and decide(contact, signal, now).state.in_flight:
                        turn.held_by_pacer.add(key[0])  # it would ring: the pacer has the last word
                        skip.add(key[0])
                        continue
                decision = unit.apply(key, signal, current=contact)
                held = decision.events[0].evidence.get("kind") if decision.events else None
                if decision.state.status is Status.RETRY_SCHEDULED and held:  # the domain held it back: why
                    unit.after.notes.append(functools.partial(self.engine.recorder.dial_held, key[0], str(held)))
                if decision.illegal or not decision.events:
                    unit.dequeue(key)  # never spin on a contact that cannot start
                    continue
                if contact.attempt == 0 and decision.state.attempt == 1:
                    dialed[key[0]] = dialed.get(key[0], 0) + 1
                if decision.state.in_flight:
                    turn.started[key[0]] = turn.started.get(key[0], 0) + 1
        next_at = None if turn.taken else txn.next_ready_at(channel, frozenset(turn.held_by_pacer))
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
