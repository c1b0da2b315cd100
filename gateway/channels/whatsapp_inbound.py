"""What customers and Meta send back to the business number → the bus and the contacts (issue 22).

Runs inside the webhook's transaction (WhatsAppChannel.on_notification), after the POST's statuses, so
the 200 goes back only once all of it is committed:
- an inbound message is noted by its wamid (Meta repeats; a repeat publishes nothing) and published on
  `P/v1/evt/inbound/whatsapp/{phone_number_id}` through the outbox;
- when it answers one of the campaign's messages (its `context.id`, a reaction's message id, or with the
  campaign's `replies.match = "sender"` the number of a contact whose campaign runs), the contact gets
  `WA_REPLY` and the domain decides `replied` and the outcome (gateway/domain/replies.py);
- an `opt_out` outcome puts the number on the blacklist in the same transaction;
- Meta's notices are kept where a later send reads them (marketing opt-outs, template states), pause
  the WhatsApp campaigns on an account restriction, and are published on
  `P/v1/evt/notice/whatsapp/{phone_number_id}` with what they did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.contract.wire import InboundContext, InboundMedia, InboundMessage, InboundReply, WhatsAppNotice
from gateway.domain.campaign import account_pause_reason
from gateway.domain.phones import international
from gateway.domain.replies import Match, Outcome, Reply, classify
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CampaignState
from gateway.domain.statuses import Channel
from gateway.engine.engine import Unit, pause_channel
from gateway.engine.ids import uuid7
from gateway.store import Key
from whatsapp.inbound import Inbound
from whatsapp.notices import (
    AccountUpdateNotice,
    Notice,
    PhoneQualityNotice,
    TemplateQualityNotice,
    TemplateStatusNotice,
    UserPreferenceNotice,
)

log = logging.getLogger("telgate.whatsapp")


@dataclass
class Taken:
    """What one webhook's messages and notices did, for the metrics after the commit."""

    messages: dict[str, int] = field(default_factory=dict)  # by type; repeats under "duplicate"
    outcomes: dict[str, int] = field(default_factory=dict)  # replies by outcome
    notices: list[Notice] = field(default_factory=list)

    def count(self, what: dict[str, int], key: str) -> None:
        what[key] = what.get(key, 0) + 1


def e164(wa_id: str) -> str:
    """Meta's `from` / `wa_id` (digits, no +) as the E.164 number the blacklist and contacts use."""
    digits = "".join(ch for ch in wa_id if ch.isascii() and ch.isdigit())
    return international("+" + digits) or "+" + digits


def _answered(m: Inbound) -> str | None:
    if m.context is not None and m.context.id:
        return m.context.id
    if m.reaction is not None and m.reaction.message_id:
        return m.reaction.message_id
    return None


def _contact(unit: Unit, m: Inbound, number: str) -> tuple[Key | None, CampaignState | None, bool]:
    """The contact a message answers, its campaign, and whether it answers by its context (else by its
    sender): the campaign is read once, for the match and for the outcome's rules."""
    answered = _answered(m)
    if answered is not None:
        key = unit.read.lookup_wamid(answered)
        if key is not None:
            return key, unit.read.get_campaign(key[0]), True
    key = unit.read.latest_contact_by_phone(Channel.WHATSAPP, number)
    if key is not None:
        camp = unit.read.get_campaign(key[0])
        if camp is not None and camp.replies is not None and camp.replies.match is Match.SENDER:
            return key, camp, False
    return None, None, False


def apply_message(unit: Unit, m: Inbound, phone_number_id: str, gateway_id: str, taken: Taken) -> None:
    pnid = m.phone_number_id or phone_number_id
    if not unit.note_inbound(m.id, pnid):
        taken.count(taken.messages, "duplicate")
        return
    taken.count(taken.messages, m.type)
    number = e164(m.from_)
    key, camp, by_context = _contact(unit, m, number)
    removed = m.reaction is not None and m.reaction.removed
    reply = Reply(m.type, m.reaction.emoji if m.reaction is not None else m.text, m.payload)
    outcome = classify(reply, camp.replies if camp is not None else None)
    answer: InboundReply | None = None
    if key is not None and not removed:
        evidence = {"source": "whatsapp", "kind": "reply", "wa_message_id": m.id, "reply": reply.evidence(outcome)}
        decision = unit.apply(key, Signal(Kind.WA_REPLY, evidence))
        answer = InboundReply(
            campaign_id=key[0], contact_id=key[1], outcome=outcome.value, status=decision.state.status
        )
        taken.count(taken.outcomes, outcome.value)
    if outcome is Outcome.OPT_OUT and not removed:
        unit.blacklist(number, True)  # no campaign on either channel contacts it again
        log.info("opt-out by reply, number blacklisted", extra={"phone": number, "wamid": m.id})
    context = None
    if m.context is not None or m.reaction is not None:
        context = InboundContext(
            id=_answered(m),
            from_=m.context.from_ if m.context is not None else None,
            forwarded=m.context.forwarded if m.context is not None else None,
            frequently_forwarded=m.context.frequently_forwarded if m.context is not None else None,
            campaign_id=key[0] if key is not None and by_context else None,
            contact_id=key[1] if key is not None and by_context else None,
        )
    media = m.media
    payload = InboundMessage(
        event_id=uuid7(int(unit.now.timestamp() * 1000)),
        wamid=m.id,
        phone_number_id=pnid,
        gateway_id=gateway_id,
        from_=number,
        profile_name=m.profile_name,
        sent_at=datetime.fromtimestamp(m.timestamp, UTC)
        if m.timestamp is not None and 0 < m.timestamp < 2**33
        else None,
        received_at=unit.now,
        type=m.type,
        text=m.text,
        payload=m.payload,
        media=None if media is None else InboundMedia(**media.model_dump(include=set(InboundMedia.model_fields))),
        location=None if m.location is None else m.location.model_dump(exclude_none=True),
        contacts=m.contacts,
        reaction=None if m.reaction is None else m.reaction.model_dump(exclude_none=True),
        context=context,
        referral=m.referral,
        errors=[e.model_dump(exclude_none=True) for e in m.errors] or None,
        raw=m.raw if m.type not in _MODELLED else None,
        reply=answer,
    )
    unit.whatsapp_event(unit.engine.topics.inbound(pnid), _json(payload), part_key=number)


_MODELLED = frozenset(
    {"text", "button", "interactive", "image", "audio", "video", "document", "sticker", "location", "contacts",
     "reaction"}
)  # fmt: skip


def apply_notice(unit: Unit, n: Notice, phone_number_id: str, gateway_id: str) -> None:
    effect: str | None = None
    campaigns: list[str] | None = None
    event: str | None = None
    match n:
        case UserPreferenceNotice():
            event = n.value
            if n.wa_id and n.category == "marketing_messages" and n.value in ("stop", "resume"):
                unit.set_marketing_opt_out(e164(n.wa_id), n.value == "stop")
                effect = "marketing_opt_out" if n.value == "stop" else "marketing_resume"
        case TemplateStatusNotice():
            event = n.event
            if n.message_template_name and n.event:
                unit.set_template_state(
                    n.message_template_name, n.message_template_language or "", n.event.upper(), n.reason
                )
                effect = "template_state"
        case AccountUpdateNotice():
            event = n.event
            reason = account_pause_reason(n.event)
            if reason is not None:
                campaigns = pause_channel(unit, Channel.WHATSAPP, reason)
                effect = "campaigns_paused"
        case TemplateQualityNotice():
            event = n.new_quality_score
        case PhoneQualityNotice():
            event = n.event
        case _:
            event = getattr(n, "event", None)
    notice = WhatsAppNotice(
        event_id=uuid7(int(unit.now.timestamp() * 1000)),
        gateway_id=gateway_id,
        phone_number_id=getattr(n, "phone_number_id", None) or phone_number_id,
        field=n.field,
        event=event if isinstance(event, str) else None,
        received_at=unit.now,
        value=n.raw if isinstance(n.raw, dict) else {"value": n.raw},
        effect=effect,
        campaigns=campaigns,
    )
    unit.whatsapp_event(unit.engine.topics.notice(notice.phone_number_id), _json(notice), part_key=n.field)


def _when(timestamp: int | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp, UTC) if timestamp is not None and 0 < timestamp < 2**33 else None


def _json(model: Any) -> bytes:
    return bytes(model.model_dump_json(by_alias=True, exclude_none=True).encode())
