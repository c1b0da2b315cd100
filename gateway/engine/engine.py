"""The engine: applies signals in order, commits state + events together, then runs effects.

One batch loop takes every piece of work queued since its last turn and runs it as one store
transaction (group commit). Work is applied in arrival order, so two signals for one contact never
race; a compare-and-set conflict (another instance moved the contact) re-runs the batch on fresh state.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from gateway.contract.topics import Topics
from gateway.domain import effects as fx
from gateway.domain.campaign import (
    Action,
    CampaignDecision,
    FinishContacts,
    abandon_rate,
    decide_campaign,
    implicit,
    live_answer,
    operator_presence,
)
from gateway.domain.campaign import create as create_campaign
from gateway.domain.decide import Decision, decide
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CampaignState, ContactState, talk_budget_spent
from gateway.domain.statuses import Channel
from gateway.engine.commit import After, Writer
from gateway.engine.ports import ChannelPort
from gateway.store import Conflict, Key, Reads, Store, Txn
from metrics.recorder import Recorder

log = logging.getLogger("telgate.engine")
R = TypeVar("R")
Clock = Callable[[], datetime]
MAX_BATCH = 512
MAX_CONFLICTS = 50  # several instances on one queue: a busy contact is moved by another, now and then


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Unit:
    """One piece of work inside the batch's transaction. It reads through `read`, decides with the
    domain (`apply` for a contact, `campaign_action` for a campaign), and every decision is written by
    the engine's `Writer` (gateway/engine/commit.py) — nothing else writes. `after` collects what is done once
    the transaction has committed: the channel effects of what was committed, metrics, wake-ups."""

    _txn: Txn
    now: datetime
    engine: Engine
    after: After = field(default_factory=After)

    @property
    def read(self) -> Reads:
        """The open transaction, for reading (what this transaction wrote included)."""
        return self._txn

    # -- contacts -----------------------------------------------------------------------------
    def apply(
        self, key: Key, signal: Signal, create: ContactState | None = None, current: ContactState | None = None
    ) -> Decision:
        """Decide `signal` for the contact and commit the decision; `current` is its state when the
        caller has just read it."""
        state = current or self._txn.get_contact(key)
        if state is None:
            if create is None:
                return Decision(
                    ContactState(campaign_id=key[0], contact_id=key[1], channel=Channel.VOICE),
                    refused="unknown_contact",
                )
            state = create
        before = state.sequence
        decision = decide(state, signal, self.now)
        rec = self.engine.recorder
        if decision.illegal:
            self.after.notes.append(lambda: rec.illegal_transition(state.channel))
            log.warning(
                "illegal transition dropped",
                extra={"campaign_id": key[0], "contact_id": key[1], "transition": decision.illegal},
            )
            return decision
        if decision.absorbed:
            why = decision.absorbed
            self.after.notes.append(lambda: rec.absorbed_signal(state.channel, why))
            if why == "recorded":
                self.engine.writer.late(self._txn, key, signal, self.now)
            return decision
        if decision.refused or (not decision.changed and decision.state is state):
            return decision
        self.engine.writer.contact(self._txn, self.after, before, decision, self.now)
        # the campaign decisions a contact's decision asks for: decided now, in the same transaction
        for effect in decision.effects:
            match effect:
                case fx.AddTalkTime(seconds):
                    camp = self._txn.get_campaign(key[0])
                    if camp is not None and camp.budget.max_talk_minutes is None:
                        self._txn.count_talk(key[0], seconds)  # no budget to check it against: sent with the batch
                        continue
                    talk, limit_minutes = self._txn.bump_campaign(key[0], talk_s=seconds)
                    if talk_budget_spent(talk, limit_minutes):
                        self.campaign_action(key[0], Action.AUTO_PAUSE, reason="budget_spent")
                case fx.PauseCampaign(reason):
                    self.campaign_action(key[0], Action.AUTO_PAUSE, reason=reason)
                case fx.CountLiveAnswer(abandoned):  # the abandonment rate, and the pause above its limit
                    counted = live_answer(self.campaign(key[0], lock=True), abandoned, self.now)
                    if counted.wrote:
                        self.engine.writer.campaign(self._txn, self.after, counted, self.now, counted.state.reason)
                        share = abandon_rate(counted.state).rate(self.now)
                        self.after.notes.append(functools.partial(rec.campaign_abandonment, key[0], share))
        return decision

    def lock_dispatch(self, channel: Channel) -> bool:
        """No other instance's dispatch turn for `channel` until this transaction ends (False: another
        instance's turn runs now)."""
        return self._txn.lock_dispatch(channel)

    def dequeue(self, key: Key) -> None:
        """Take a contact that cannot start out of the dispatch queue (the dispatcher never spins on it)."""
        self._txn.set_ready(key, None)

    # -- campaigns ----------------------------------------------------------------------------
    def campaign(self, campaign_id: str, create: bool = True, lock: bool = False) -> CampaignState:
        """The campaign; one that nobody created is created `in_progress` (its first contact names it).
        `lock`: as last committed, and no other instance decides for it until this transaction ends."""
        camp = self._txn.lock_campaign(campaign_id) if lock else self._txn.get_campaign(campaign_id)
        if camp is not None:
            return camp
        decision = implicit(campaign_id)
        if create:
            self.engine.writer.campaign(self._txn, self.after, decision, self.now, None)
        return decision.state

    def create_campaign(self, campaign_id: str, **settings: Any) -> CampaignDecision:
        """The `create` command: a draft campaign (refused `campaign_exists`)."""
        decision = create_campaign(self._txn.lock_campaign(campaign_id), campaign_id, **settings)
        self.engine.writer.campaign(self._txn, self.after, decision, self.now, None)
        return decision

    def campaign_action(
        self, campaign_id: str, action: Action, reason: str | None = None, **settings: Any
    ) -> CampaignDecision:  # settings: start_at, budget, max_cps, max_concurrent
        decision = decide_campaign(self.campaign(campaign_id, lock=True), action, self.now, reason=reason, **settings)
        if decision.refused:
            return decision
        self.engine.writer.campaign(self._txn, self.after, decision, self.now, reason)
        for effect in decision.effects:
            if isinstance(effect, FinishContacts):
                for key in self._txn.unfinished_contacts(campaign_id):
                    self.apply(key, Signal(Kind.FINISH, {"source": "admin", "kind": "campaign_finished"}))
        return decision

    def operator_presence(self, campaign_id: str, operator_id: str, available: bool) -> None:
        """An operator `available` (or no longer) for the campaign's predictive calls."""
        decision = operator_presence(self.campaign(campaign_id, lock=True), operator_id, available)
        if decision.wrote:
            self.engine.writer.campaign(self._txn, self.after, decision, self.now, None)

    # -- what commands and channels write beside decisions ----------------------------------------
    def blacklist(self, number: str, add: bool) -> None:
        self._txn.blacklist(number, add)
        self.after.wrote = True

    def command_result(
        self, command_id: str, payload: bytes, response_topic: str | None, correlation: bytes | None, store: bool
    ) -> None:
        self.engine.writer.command_result(
            self._txn, self.after, command_id, payload, response_topic, correlation, store
        )

    def whatsapp_event(self, topic: str, payload: bytes, part_key: str) -> None:
        self.engine.writer.whatsapp_event(self._txn, self.after, topic, payload, part_key)

    def map_wamid(self, wamid: str, key: Key) -> None:
        self._txn.map_wamid(wamid, key)

    def note_inbound(self, wamid: str, phone_number_id: str) -> bool:
        """An inbound message's wamid, noted now: True the first time (Meta repeats; False for a repeat,
        also one earlier in this same transaction)."""
        return self._txn.note_inbound(wamid, phone_number_id, self.now)

    def set_marketing_opt_out(self, phone: str, stop: bool) -> None:
        """Meta's `user_preferences` stop (True) or resume for `phone`, E.164 with + (phones.normalise)."""
        self._txn.set_marketing_opt_out(phone, stop, self.now)

    def set_template_state(self, name: str, language: str, status: str, reason: str | None) -> None:
        """Meta's `message_template_status_update` (language "": every language of the name)."""
        self._txn.set_template_state(name, language, status, reason, self.now)

    def fire_timer(self, timer_id: int) -> bool:
        """A persisted timer fires once: False when another transaction already took it."""
        return self._txn.delete_timer(timer_id)

    def take_over(self, member: str) -> tuple[int, str] | None:
        """A member whose lease expired: bury it and apply SPEC §9's restart rule to what it left in
        flight, in this one transaction — (the contacts settled, its MQTT client id), or None when
        another instance buried it first."""
        bus_client = self._txn.lease_bury(member)
        if bus_client is None:
            return None
        return self.restart_rule(member), bus_client

    def restart_rule(self, gateway_id: str) -> int:
        """SPEC §9: what `gateway_id` left in flight when it died (calls, ambiguous sends) is settled;
        the contacts settled."""
        keys = self._txn.in_flight_contacts(gateway_id)
        for key in keys:
            self.apply(key, Signal(Kind.GATEWAY_RESTART, {"source": "gateway", "kind": "gateway_restart"}))
        return len(keys)


class EngineStopped(Exception):
    """The service is stopping: queued work was not applied (and nothing of it was committed)."""


class _WorkFailed(Exception):
    def __init__(self, index: int) -> None:
        super().__init__(f"work {index} of the batch failed")
        self.index = index


def pause_channel(unit: Unit, channel: Channel, reason: str) -> list[str]:
    ids = unit.read.campaigns_with_channel(channel, "in_progress")
    for campaign_id in ids:
        unit.campaign_action(campaign_id, Action.AUTO_PAUSE, reason=reason)
    return ids


@dataclass(frozen=True, slots=True)
class Hint:
    """What a piece of work is about to read: the batch reads it up front in one query per kind
    (Reads.prefetch) instead of a round trip per contact."""

    contacts: tuple[Key, ...] = ()
    commands: tuple[str, ...] = ()


Fallback = Callable[[Unit, BaseException], R]


@dataclass
class _Work(Generic[R]):
    fn: Callable[[Unit], R]
    future: asyncio.Future[R]
    hint: Hint | None = None
    # what to commit instead when `fn` raises (the poison-message rule, DESIGN habit 15): a command's
    # `internal_error` result. Run in the same batch, on a transaction without `fn`'s writes.
    fallback: Fallback[R] | None = None


def _instead(fallback: Fallback[R], cause: BaseException) -> Callable[[Unit], R]:
    return lambda unit: fallback(unit, cause)


class Engine:
    def __init__(
        self,
        store: Store,
        gateway_id: str,
        topics: Topics,
        recorder: Recorder,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.gateway_id = gateway_id
        self.topics = topics
        self.recorder = recorder
        self.writer = Writer(gateway_id, topics, recorder)
        self.clock = clock
        self.ports: dict[Channel, ChannelPort] = {}
        self._queue: asyncio.Queue[_Work[Any]] = asyncio.Queue()
        self._listeners: dict[str, list[Callable[[], None]]] = {"commit": [], "dispatch": [], "timers": []}

    def on(self, what: str, callback: Callable[[], None]) -> None:
        """Call `callback` after a commit that wrote events ('commit'), enqueued ('dispatch') or set timers."""
        self._listeners[what].append(callback)

    def submit(
        self, fn: Callable[[Unit], R], hint: Hint | None = None, fallback: Fallback[R] | None = None
    ) -> asyncio.Future[R]:
        """Queue `fn` for the next batch transaction now (arrival order is apply order). Should `fn` raise,
        `fallback(unit, exc)` is committed in its place; without one the future takes the exception."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Work(fn, fut, hint, fallback))
        return fut

    async def execute(self, fn: Callable[[Unit], R], hint: Hint | None = None) -> R:
        """Run `fn` inside the next batch transaction; its result once committed."""
        return await self.submit(fn, hint)

    def submit_signal(self, key: Key, signal: Signal) -> asyncio.Future[Decision]:
        return self.submit(lambda unit: unit.apply(key, signal), Hint(contacts=(key,)))

    async def signal(self, key: Key, signal: Signal) -> Decision:
        return await self.submit_signal(key, signal)

    async def auto_pause(self, channel: Channel, reason: str) -> list[str]:
        """The hook a channel calls when its far side is down (PBX, WhatsApp account): every campaign in
        progress with contacts on that channel pauses itself with `reason` (SPEC §5.3)."""
        return await self.execute(functools.partial(pause_channel, channel=channel, reason=reason))

    async def run(self) -> None:
        """The batch loop; runs until cancelled. Work still queued then fails with EngineStopped, so
        nobody waits for a decision that will never be made."""
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self._run_batch(batch)
        finally:
            while not self._queue.empty():
                work = self._queue.get_nowait()
                if not work.future.done():
                    work.future.set_exception(EngineStopped("the engine stopped before this work ran"))

    async def _run_batch(self, batch: list[_Work[Any]]) -> None:
        live = [w for w in batch if not w.future.done()]
        conflicts = 0
        while live:
            now = self.clock()
            try:
                units, results = await self.store.run(functools.partial(self._apply_batch, now=now, batch=live))
            except asyncio.CancelledError:  # stopping: the batch may or may not commit; its callers retry
                self._fail(live, EngineStopped("the engine stopped during this work's transaction"))
                raise
            except Conflict as exc:  # another instance moved a contact: decide the batch again on fresh state
                conflicts += 1
                log.info("compare-and-set conflict, deciding again", extra={"detail": str(exc)})
                if conflicts < MAX_CONFLICTS:
                    await asyncio.sleep(random.uniform(0, 0.005 * min(conflicts, 10)))  # let the other commit
                    continue
                self._fail(live, Conflict(f"gave up after {MAX_CONFLICTS} conflicts"))
                return
            except _WorkFailed as failed:  # a bug in one piece of work: contain it, run the rest again
                work, cause = live[failed.index], failed.__cause__ or failed
                if work.fallback is not None:  # committed in its place, with the rest of the batch
                    live[failed.index] = _Work(_instead(work.fallback, cause), work.future, None)
                    continue
                log.error("work failed", exc_info=cause)
                work.future.set_exception(cause)
                del live[failed.index]
                continue
            except Exception as exc:  # the store itself failed (disk full, I/O error): nothing was committed
                log.error("store transaction failed", extra={"detail": repr(exc)})
                self._fail(live, exc)
                return
            self._after_commit(units, live, results)
            return

    @staticmethod
    def _fail(works: list[_Work[Any]], exc: BaseException) -> None:
        for w in works:
            if not w.future.done():
                w.future.set_exception(exc)

    def _after_commit(self, units: list[Unit], works: list[_Work[Any]], results: list[Any]) -> None:
        wrote = dispatch = timers = False
        for unit, work, result in zip(units, works, results, strict=True):
            after = unit.after
            for note in after.notes:
                note()
            for effect, contact in after.effects:  # carried out from what was committed
                port = self.ports.get(contact.channel)
                if port is not None:
                    port.submit(effect, contact)
            wrote |= after.wrote
            dispatch |= after.wake_dispatch
            timers |= after.wake_timers
            if not work.future.done():
                work.future.set_result(result)
        for what, flag in (("commit", wrote), ("dispatch", dispatch), ("timers", timers)):
            if flag:
                for cb in self._listeners[what]:
                    cb()

    def _apply_batch(self, txn: Txn, now: datetime, batch: list[_Work[Any]]) -> tuple[list[Unit], list[Any]]:
        """In the store thread, inside one transaction. Any exception rolls the whole batch back."""
        units: list[Unit] = []
        results: list[Any] = []
        hints = [w.hint for w in batch if w.hint is not None]
        if hints:
            txn.prefetch(
                contacts=[k for h in hints for k in h.contacts], commands=[c for h in hints for c in h.commands]
            )
        for index, work in enumerate(batch):
            unit = Unit(txn, now, self)
            try:
                results.append(work.fn(unit))
            except Conflict:
                raise
            except Exception as exc:
                raise _WorkFailed(index) from exc
            units.append(unit)
        return units, results
