"""Commit: the one place that writes a decision to the store.

The domain decides (`decide()` for a contact, `decide_campaign()` for a campaign) and returns the whole
decision: the new state, the events to publish, the effects. The functions here write it inside the
batch's transaction — the state as a compare-and-set on `sequence`, its events into the outbox, the
queue, the timers, the campaign counters — and note in `After` what is carried out once the transaction
has committed: the channel effects (dial, send, cancel; an answered call's prompt, transfer, hang-up) of
what was committed, the metrics, the wake-ups of the dispatcher and the scheduler. Nothing here decides
a status, and nothing outside this module writes one.

Payloads and topics are built here too, from the committed state (`gateway/contract/wire.py` encodes them).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.contract.topics import Topics
from gateway.contract.wire import CampaignStatusEvent, encode_contact_event
from gateway.domain import effects as fx
from gateway.domain.campaign import CampaignDecision, FinishContacts
from gateway.domain.decide import Decision, EventDraft
from gateway.domain.signals import Signal
from gateway.domain.state import CampaignState, ContactState
from gateway.domain.statuses import label
from gateway.engine.ids import uuid7
from gateway.store import Conflict, Key, Txn
from metrics.recorder import Recorder

log = logging.getLogger("telgate.engine")


def cancel_note(origin: str, state: ContactState) -> bytes:
    """The notification that carries a committed cancel to the instance whose call it is."""
    key = [state.campaign_id, state.contact_id]
    return json.dumps({"origin": origin, "effect": "cancel_call", "channel": str(state.channel), "key": key}).encode()


_STARTS = (fx.Dial, fx.Send)  # a tuple made once: `fx.Dial | fx.Send` built a union per effect (py-spy)


@dataclass
class After:
    """What one piece of work's commits ask for once the transaction has committed."""

    effects: list[tuple[fx.Effect, ContactState]] = field(default_factory=list)  # dial, send, cancel, ...
    notes: list[Callable[[], None]] = field(default_factory=list)  # metrics
    wrote: bool = False  # an event or outbox row was written: the publisher has work
    wake_dispatch: bool = False  # the queue or a campaign changed: the dispatcher looks again
    wake_timers: bool = False  # a timer was set: the scheduler looks again


Watcher = Callable[[ContactState, EventDraft, datetime], None]


@dataclass(frozen=True)
class Writer:
    """The instance-wide parts a commit needs: who writes, where events go, what is counted, and who
    hears of each contact's committed status changes (`watchers`, called in the event loop after the
    commit with the committed state: the predictive pacer's observations)."""

    gateway_id: str
    topics: Topics
    recorder: Recorder
    watchers: list[Watcher] = field(default_factory=list)

    # -- contacts -----------------------------------------------------------------------------------
    def contact(self, txn: Txn, after: After, before: int, decision: Decision, now: datetime) -> None:
        """Write a contact's decision: its state if the stored sequence is still `before` (else
        Conflict: decide again), its events, the store effects; the channel effects go to `after`."""
        new = decision.state
        key = (new.campaign_id, new.contact_id)
        # a contact belongs to the instance that starts its attempt (SPEC §11); a signal decided by
        # another instance (a webhook, a cancel) never moves it: None keeps the stored owner
        starts = any(isinstance(e, _STARTS) for e in decision.effects)
        owner = self.gateway_id if new.in_flight and starts else None
        effects = decision.effects
        ready: tuple[datetime, int] | None = None
        if before == 0:  # a new contact takes its place in the queue with its first write
            for effect in effects:
                if isinstance(effect, fx.Enqueue):
                    ready = (effect.ready_at, effect.priority)
                    after.wake_dispatch = True
            effects = tuple(e for e in effects if not isinstance(e, fx.Enqueue))
        if not txn.put_contact(new, before, owner, ready):
            raise Conflict(f"{key[0]}/{key[1]} moved past sequence {before}")
        after.wrote = True
        for draft in decision.events:
            txn.add_event(key, self.topics.contact(new.channel, key[0], key[1]), self.contact_event(new, draft, now))
            previous = str(draft.previous_status) if draft.previous_status else None
            after.notes.append(
                functools.partial(self.recorder.transition, str(new.channel), str(draft.status), previous, key[0])
            )
            for watcher in self.watchers:
                after.notes.append(functools.partial(watcher, new, draft, now))
        for effect in effects:
            self._effect(txn, after, key, new, effect, now)

    def _effect(self, txn: Txn, after: After, key: Key, state: ContactState, effect: fx.Effect, now: datetime) -> None:
        match effect:
            case fx.Enqueue(ready_at, priority):
                txn.set_ready(key, ready_at, priority)
                after.wake_dispatch = True
            case fx.Dequeue():
                txn.set_ready(key, None)
            case fx.StartTimer(kind, due_at):
                txn.add_timer(kind, key[0], key[1], due_at)
                after.wake_timers = True
            case fx.CancelTimers():
                txn.cancel_timers(key)
            case fx.MapWamid(wamid):
                txn.map_wamid(wamid, key)
            case fx.CountDialed():
                txn.count_dialed(key[0])
            case fx.BlacklistNumber(phone):
                txn.blacklist(phone, True)  # an opt-out: with the decision that heard it
            case fx.NoteNumber(kind):  # the caps over every campaign count it (docs/lawful-calling.md)
                if state.phone:
                    txn.note_number(state.phone, kind, now, key[0])
            case fx.AddTalkTime() | fx.PauseCampaign():
                pass  # campaign decisions: the engine decides them (Unit.apply) after this write
            case fx.CancelCall():
                after.effects.append((effect, state))
                # the call may be another instance's: its owner hears of it once this commits
                txn.notify(cancel_note(self.gateway_id, state))
            case fx.Dial() | fx.Send() | fx.PlayPrompt() | fx.Transfer() | fx.HangUp() | fx.ListenAmd() | fx.Gather():
                # an answered call's prompt, transfer and hang-up: asked by signals of the channel that
                # holds the call, carried out by it
                after.effects.append((effect, state))

    def late(self, txn: Txn, key: Key, signal: Signal, now: datetime) -> None:
        """A webhook for a message whose contact was canceled/removed: kept for the read API, not published."""
        signal_json = {"kind": str(signal.kind), **signal.evidence}
        payload = json.dumps({"recorded_at": now.isoformat(), "signal": signal_json, "published": False}).encode()
        txn.record(key, payload)

    def contact_event(self, state: ContactState, draft: EventDraft, now: datetime) -> bytes:
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

    # -- campaigns ----------------------------------------------------------------------------------
    def campaign(self, txn: Txn, after: After, decision: CampaignDecision, now: datetime, reason: str | None) -> None:
        """Write an accepted campaign decision: its state, its event when it changed (or was created),
        the timer its effects ask for (finishing the contacts is a decision per contact: Unit.campaign_action)."""
        if not decision.wrote:
            return
        camp = decision.state
        txn.put_campaign(camp, created=decision.created)
        after.wrote = after.wake_dispatch = True
        if decision.changed:
            self.campaign_event(txn, camp, decision.previous, now)
            if decision.previous is not None and camp.paused_by_gateway:
                after.notes.append(functools.partial(self.recorder.campaign_auto_paused, reason or ""))
        for effect in decision.effects:
            match effect:
                case fx.StartTimer(kind, due_at):
                    txn.add_timer(kind, camp.campaign_id, None, due_at)
                    after.wake_timers = True
                case FinishContacts():
                    pass  # decided contact by contact by the Unit, in this transaction

    def campaign_event(self, txn: Txn, camp: CampaignState, previous: Any, now: datetime) -> None:
        event = CampaignStatusEvent(
            event_id=uuid7(),
            occurred_at=now,
            campaign_id=camp.campaign_id,
            status=camp.status,
            previous_status=previous,
            reason=camp.reason,
            counts=txn.counts(camp.campaign_id),
        )
        payload = event.model_dump_json(by_alias=True).encode()
        txn.add_outbox(self.topics.campaign(camp.campaign_id), payload, retain=True)

    # -- what webhooks write beside decisions -------------------------------------------------------
    def whatsapp_event(self, txn: Txn, after: After, topic: str, payload: bytes, part_key: str) -> None:
        """An inbound message or a notice of Meta's, published through the outbox like an event: at least
        once, committed with what it decided (`part_key`: one sender's messages stay in order)."""
        txn.add_outbox(topic, payload, part_key=part_key)
        after.wrote = True

    # -- what commands write beside decisions -------------------------------------------------------
    def command_result(
        self,
        txn: Txn,
        after: After,
        command_id: str,
        payload: bytes,
        response_topic: str | None,
        correlation: bytes | None,
        store: bool,
    ) -> None:
        """A command's result: kept under its id (a repeat is answered from it) unless it is the answer
        to a repeat, and published on evt/command and on the command's Response Topic."""
        if store:
            txn.put_command(command_id, payload)
        txn.add_outbox(self.topics.command_result, payload, part_key=command_id)
        if response_topic:
            txn.add_outbox(response_topic, payload, correlation=correlation, part_key=command_id)
        after.wrote = True
