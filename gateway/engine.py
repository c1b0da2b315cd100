"""The engine: applies signals in order, commits state + events together, then runs effects.

One batch loop takes every piece of work queued since its last turn and runs it as one store
transaction (group commit). Work is applied in arrival order, so two signals for one contact never
race; a compare-and-set conflict (another instance moved the contact) re-runs the batch on fresh state.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from metrics.recorder import Recorder

from .domain import effects as fx
from .domain.campaign import Action, CampaignDecision, decide_campaign, new_campaign
from .domain.decide import Decision, decide
from .domain.signals import Signal
from .domain.state import CampaignState, ContactState
from .domain.statuses import Channel, label
from .ids import uuid7
from .ports import ChannelPort
from .store import Conflict, Key, Store, Txn
from .wire import CampaignStatusEvent, encode_contact_event

log = logging.getLogger("telgate.engine")
R = TypeVar("R")
Clock = Callable[[], datetime]
MAX_BATCH = 512


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Topics:
    prefix: str

    def contact(self, channel: str, campaign_id: str, contact_id: str) -> str:
        return f"{self.prefix}/v1/evt/contact/{channel}/{campaign_id}/{contact_id}"

    def campaign(self, campaign_id: str) -> str:
        return f"{self.prefix}/v1/evt/campaign/{campaign_id}"

    @property
    def command_result(self) -> str:
        return f"{self.prefix}/v1/evt/command"

    @property
    def commands(self) -> str:
        return f"{self.prefix}/v1/cmd/+"

    def presence(self, gateway_id: str) -> str:
        return f"{self.prefix}/v1/gateways/{gateway_id}/status"


@dataclass
class Unit:
    """One piece of work's view of the open transaction: decide, write, and note what to do after."""

    txn: Txn
    now: datetime
    engine: Engine
    after: list[tuple[fx.Effect, ContactState]] = field(default_factory=list)
    notes: list[Callable[[], None]] = field(default_factory=list)
    wake_dispatch: bool = False
    wake_timers: bool = False
    wrote: bool = False

    # -- contacts -----------------------------------------------------------------------------
    def apply(
        self, key: Key, signal: Signal, create: ContactState | None = None, current: ContactState | None = None
    ) -> Decision:
        """Decide `signal` for the contact; `current` is its state when the caller has just read it."""
        state = current or self.txn.get_contact(key)
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
            self.notes.append(lambda: rec.illegal_transition(state.channel))
            log.warning(
                "illegal transition dropped",
                extra={"campaign_id": key[0], "contact_id": key[1], "transition": decision.illegal},
            )
            return decision
        if decision.absorbed:
            why = decision.absorbed
            self.notes.append(lambda: rec.absorbed_signal(state.channel, why))
            if why == "recorded":
                self._record_late(key, state, signal)
            return decision
        if decision.refused or (not decision.changed and decision.state is state):
            return decision
        new = decision.state
        owner = self.engine.gateway_id if new.in_flight else None
        effects = decision.effects
        ready: tuple[datetime, int] | None = None
        if before == 0:  # a new contact takes its place in the queue with its first write
            for effect in effects:
                if isinstance(effect, fx.Enqueue):
                    ready = (effect.ready_at, effect.priority)
                    self.wake_dispatch = True
            effects = tuple(e for e in effects if not isinstance(e, fx.Enqueue))
        if not self.txn.put_contact(new, before, owner, ready):
            raise Conflict(f"{key[0]}/{key[1]} moved past sequence {before}")
        self.wrote = True
        for draft in decision.events:
            payload = self.engine.contact_event(new, draft, self.now)
            self.txn.add_event(key, self.engine.topics.contact(new.channel, key[0], key[1]), payload)
            ch, st, prev = (
                str(new.channel),
                str(draft.status),
                (str(draft.previous_status) if draft.previous_status else None),
            )
            self.notes.append(functools.partial(rec.transition, ch, st, prev, key[0]))
        for effect in effects:
            self._effect(key, new, effect)
        return decision

    def _record_late(self, key: Key, state: ContactState, signal: Signal) -> None:
        """A webhook for a message whose contact was canceled/removed: kept for the read API, not published."""
        payload = json.dumps(
            {
                "recorded_at": self.now.isoformat(),
                "signal": {"kind": str(signal.kind), **signal.evidence},
                "published": False,
            }
        ).encode()
        self.txn.record(key, payload)

    def _effect(self, key: Key, state: ContactState, effect: fx.Effect) -> None:
        txn = self.txn
        match effect:
            case fx.Enqueue(ready_at, priority):
                txn.set_ready(key, ready_at, priority)
                self.wake_dispatch = True
            case fx.Dequeue():
                txn.set_ready(key, None)
            case fx.StartTimer(kind, due_at):
                txn.add_timer(kind, key[0], key[1], due_at)
                self.wake_timers = True
            case fx.CancelTimers():
                txn.cancel_timers(key)
            case fx.MapWamid(wamid):
                txn.map_wamid(wamid, key)
            case fx.CountDialed():
                txn.bump_campaign(key[0], dialed=1)
            case fx.AddTalkTime(seconds):
                talk, limit_minutes = txn.bump_campaign(key[0], talk_s=seconds)
                if limit_minutes is not None and talk >= limit_minutes * 60.0:
                    self.campaign_action(key[0], Action.AUTO_PAUSE, reason="budget_spent")
            case fx.PauseCampaign(reason):
                self.campaign_action(key[0], Action.AUTO_PAUSE, reason=reason)
            case fx.Dial() | fx.Send() | fx.CancelCall():
                self.after.append((effect, state))

    # -- campaigns ----------------------------------------------------------------------------
    def campaign(self, campaign_id: str, create: bool = True) -> CampaignState:
        camp = self.txn.get_campaign(campaign_id)
        if camp is None:
            camp = new_campaign(campaign_id, draft=False)
            if create:
                self.txn.put_campaign(camp)
                self._campaign_event(camp, None)
        return camp

    def campaign_action(
        self, campaign_id: str, action: Action, reason: str | None = None, **settings: Any
    ) -> CampaignDecision:  # settings: start_at, budget, max_cps, max_concurrent
        camp = self.campaign(campaign_id)
        decision = decide_campaign(camp, action, self.now, reason=reason, **settings)
        if decision.refused:
            return decision
        self.txn.put_campaign(decision.state)
        self.wrote = True
        self.wake_dispatch = True
        if decision.changed:
            self._campaign_event(decision.state, decision.previous)
            if action is Action.AUTO_PAUSE:
                self.engine.recorder.campaign_auto_paused(reason or "")
        return decision

    def _campaign_event(self, camp: CampaignState, previous: Any) -> None:
        event = CampaignStatusEvent(
            event_id=uuid7(),
            occurred_at=self.now,
            campaign_id=camp.campaign_id,
            status=camp.status,
            previous_status=previous,
            reason=camp.reason,
            counts=self.txn.counts(camp.campaign_id),
        )
        payload = event.model_dump_json(by_alias=True).encode()
        self.txn.add_outbox(self.engine.topics.campaign(camp.campaign_id), payload, retain=True)
        self.wrote = True


class EngineStopped(Exception):
    """The service is stopping: queued work was not applied (and nothing of it was committed)."""


class _WorkFailed(Exception):
    def __init__(self, index: int) -> None:
        super().__init__(f"work {index} of the batch failed")
        self.index = index


def pause_channel(unit: Unit, channel: Channel, reason: str) -> list[str]:
    ids = unit.txn.campaigns_with_channel(channel, "in_progress")
    for campaign_id in ids:
        unit.campaign_action(campaign_id, Action.AUTO_PAUSE, reason=reason)
    return ids


@dataclass
class _Work(Generic[R]):
    fn: Callable[[Unit], R]
    future: asyncio.Future[R]


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
        self.clock = clock
        self.ports: dict[Channel, ChannelPort] = {}
        self._queue: asyncio.Queue[_Work[Any]] = asyncio.Queue()
        self._listeners: dict[str, list[Callable[[], None]]] = {"commit": [], "dispatch": [], "timers": []}

    def on(self, what: str, callback: Callable[[], None]) -> None:
        """Call `callback` after a commit that wrote events ('commit'), enqueued ('dispatch') or set timers."""
        self._listeners[what].append(callback)

    def submit(self, fn: Callable[[Unit], R]) -> asyncio.Future[R]:
        """Queue `fn` for the next batch transaction now (arrival order is apply order)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Work(fn, fut))
        return fut

    async def execute(self, fn: Callable[[Unit], R]) -> R:
        """Run `fn` inside the next batch transaction; its result once committed."""
        return await self.submit(fn)

    async def signal(self, key: Key, signal: Signal) -> Decision:
        return await self.execute(lambda unit: unit.apply(key, signal))

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
                if conflicts < 5:
                    continue
                self._fail(live, Conflict("gave up after 5 conflicts"))
                return
            except _WorkFailed as failed:  # a bug in one piece of work: fail it alone, run the rest again
                log.error("work failed", exc_info=failed.__cause__)
                live[failed.index].future.set_exception(failed.__cause__ or failed)
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
            for note in unit.notes:
                note()
            for effect, contact in unit.after:
                port = self.ports.get(contact.channel)
                if port is not None:
                    port.submit(effect, contact)
            wrote |= unit.wrote
            dispatch |= unit.wake_dispatch
            timers |= unit.wake_timers
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

    # -- event payloads --------------------------------------------------------------------------
    def contact_event(self, state: ContactState, draft: Any, now: datetime) -> bytes:
        # every value is already typed by the domain: encoded without building the model (hot path);
        # tests validate published payloads against the model
        return encode_contact_event(
            event_id=uuid7(int(now.timestamp() * 1000)),
            sequence=draft.sequence,
            occurred_at=now,
            gateway_id=self.gateway_id,
            campaign_id=state.campaign_id,
            contact_id=state.contact_id,
            channel=state.channel,
            status=draft.status,
            label=label(state.channel, draft.status, state.profile),
            previous_status=draft.previous_status,
            final=draft.final,
            attempt=draft.attempt,
            max_attempts=state.policy.max_attempts,
            retry_at=draft.retry_at,
            phone=state.phone or state.phone_raw or None,
            evidence=draft.evidence,
            meta=state.meta,
        )
