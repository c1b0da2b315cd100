"""The WhatsApp channel: `send` effects → the Cloud API client; results and webhooks → signals (§6.2).

`whatsapp/` knows the Cloud API, not contacts; this adapter is the translation layer between the two.
The wamid → contact map lives in the store (it survives restarts); a webhook whose wamid is unknown
(an ambiguous send that got no response) is matched by its `biz_opaque_callback_data`
(`{campaign_id}/{contact_id}/{attempt}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from typing import Any

from gateway.channels.whatsapp_inbound import Taken, apply_message, apply_notice
from gateway.domain import effects as fx
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState
from gateway.domain.statuses import Channel
from gateway.engine.engine import Engine, Unit
from gateway.store import Key
from metrics.recorder import Recorder
from whatsapp.client import Accepted, CloudApiClient, Failed, SendResult, TimedOut
from whatsapp.errors import ErrorClass, classify, is_account_level
from whatsapp.inbound import inbound_messages
from whatsapp.models import ApiError, Notification, Status
from whatsapp.notices import PhoneQualityNotice, TemplateQualityNotice, notices
from whatsapp.ratelimit import PairLimit, RateBackoff

log = logging.getLogger("telgate.whatsapp")

CLASS_KIND = {
    ErrorClass.RETRYABLE: Kind.WA_RETRYABLE,
    ErrorClass.PAIR_LIMIT: Kind.WA_PAIR_LIMIT,
    ErrorClass.INVALID: Kind.WA_INVALID,
    ErrorClass.ACCOUNT: Kind.WA_ACCOUNT,
    ErrorClass.SENDING_FAILED: Kind.WA_SENDING_FAILED,
    ErrorClass.UNDELIVERED: Kind.WA_DELIVERY_FAILED,
    ErrorClass.REJECTED: Kind.WA_REJECTED,
}
STATUS_KIND = {"sent": Kind.WA_SENT, "delivered": Kind.WA_DELIVERED, "read": Kind.WA_READ, "played": Kind.WA_READ}


# metric labels, bounded: anything else is "other"
INBOUND_TYPES = frozenset(
    {"text", "button", "interactive", "image", "audio", "video", "document", "sticker", "location", "contacts",
     "reaction", "order", "unsupported", "duplicate"}
)  # fmt: skip
NOTICE_FIELDS = frozenset(
    {"user_preferences", "message_template_status_update", "message_template_quality_update",
     "template_category_update", "account_update", "phone_number_quality_update", "account_alerts"}
)  # fmt: skip
QUALITY = {"GREEN": 3, "YELLOW": 2, "RED": 1, "UNKNOWN": 0}
ACCEPTED_KEPT = 200_000  # send times kept for `telgate_whatsapp_time_to_status_seconds` (oldest dropped)


def callback_data(contact: ContactState, attempt: int) -> str:
    return f"{contact.campaign_id}/{contact.contact_id}/{attempt}"


def parse_callback(data: str | None) -> tuple[Key, int] | None:
    if not data:
        return None
    parts = data.rsplit("/", 1)
    # ASCII digits, and few: `isdigit` takes "²", and int() refuses 4,300 digits (a signed webhook got 500)
    if len(parts) != 2 or "/" not in parts[0] or not (parts[1].isascii() and parts[1].isdigit()) or len(parts[1]) > 9:
        return None
    campaign_id, contact_id = parts[0].split("/", 1)
    return (campaign_id, contact_id), int(parts[1])


def _error_evidence(err: ApiError | None) -> dict[str, Any]:
    if err is None:
        return {}
    details = err.error_data.details if err.error_data else None
    return {"wa_error_code": err.code, "wa_error_title": err.text or None, "wa_error_details": details}


def result_signal(result: SendResult, attempt: int, ambiguous_timeout_s: float) -> Signal:
    """A send's outcome → the domain signal (the first row of §6.2's table that matches)."""
    base = {"source": "whatsapp"}
    match result:
        case Accepted(wamid, message_status, http_status, _):
            return Signal(
                Kind.WA_ACCEPTED,
                {
                    **base,
                    "kind": "accepted",
                    "wa_message_id": wamid,
                    "message_status": message_status,
                    "http_status": http_status,
                },
                wamid=wamid,
                attempt=attempt,
            )
        case Failed(error_class, code, title, details, http_status, _):
            return Signal(
                CLASS_KIND[error_class],
                {
                    **base,
                    "kind": "api_error",
                    "wa_error_code": code,
                    "wa_error_title": title or None,
                    "wa_error_details": details,
                    "http_status": http_status,
                },
                attempt=attempt,
            )
        case TimedOut(written=True):
            return Signal(
                Kind.WA_AMBIGUOUS,
                {**base, "kind": "timeout", "written": True},
                attempt=attempt,
                duration_s=ambiguous_timeout_s,
            )
        case TimedOut():
            return Signal(Kind.WA_RETRYABLE, {**base, "kind": "timeout", "written": False}, attempt=attempt)
    raise AssertionError(result)


def status_signal(status: Status) -> Signal | None:
    """A webhook status → the domain signal; None for a value we do not know (counted, ignored)."""
    evidence = {
        "source": "whatsapp",
        "kind": status.status,
        "wa_message_id": status.id,
        "status_timestamp": None if status.timestamp is None else str(status.timestamp),
    }
    if status.status in STATUS_KIND:
        return Signal(STATUS_KIND[status.status], evidence)
    if status.status == "failed":
        err = status.errors[0] if status.errors else None
        kind = CLASS_KIND[classify(err.code if err else None, on_webhook=True)]
        return Signal(kind, {**evidence, **_error_evidence(err)})
    return None


class WhatsAppChannel:
    """The ChannelPort for WhatsApp: sends with the API's rate and Meta's pair limit, in its own tasks."""

    channel = Channel.WHATSAPP

    def __init__(
        self,
        engine: Engine,
        client: CloudApiClient,
        recorder: Recorder,
        max_mps: float,
        ambiguous_timeout_s: float = 600.0,
        max_concurrent: int = 256,
        pair_interval_s: float = 6.0,
        phone_number_id: str = "",
    ) -> None:
        self.engine = engine
        self.phone_number_id = phone_number_id  # the topic of what arrives without metadata
        self.client = client
        self.recorder = recorder
        self.max_concurrent = max_concurrent
        self.ambiguous_timeout_s = ambiguous_timeout_s
        self.backoff = RateBackoff(max_mps)  # the dispatcher's bucket spends it (max_rate, read each turn)
        self.pairs = PairLimit(pair_interval_s)
        self._queue: asyncio.Queue[tuple[ContactState, int]] = asyncio.Queue()
        self._active: Counter[str] = Counter()
        self._accepted_at: OrderedDict[str, float] = OrderedDict()  # wamid → when Meta took it (for metrics)
        self.state = "up"

    @property
    def max_rate(self) -> float:
        """Sends per second now: `whatsapp.max_mps`, halved for a minute after a 130429."""
        return self.backoff.current_rate(time.monotonic())

    def active(self, campaign_id: str | None = None) -> int:
        return sum(self._active.values()) if campaign_id is None else self._active[campaign_id]

    def active_counts(self) -> dict[str, int]:
        """Sends in flight per campaign, a copy for the dispatcher's turn (it runs on the store thread)."""
        return dict(self._active)

    def submit(self, effect: fx.Effect, contact: ContactState) -> None:
        if isinstance(effect, fx.Send):
            self._active[contact.campaign_id] += 1
            self._queue.put_nowait((contact, effect.attempt))

    async def run(self) -> None:
        async with self.client, asyncio.TaskGroup() as tg:
            while True:
                contact, attempt = await self._queue.get()
                tg.create_task(self._send(contact, attempt), name=f"wa-send-{contact.contact_id}")

    async def _send(self, contact: ContactState, attempt: int) -> None:
        key = (contact.campaign_id, contact.contact_id)
        try:
            now = time.monotonic()
            wait = self.pairs.reserve(contact.phone or "", now)  # the rate itself was spent at dispatch
            if wait > 0:
                await asyncio.sleep(wait)
            assert contact.template is not None and contact.phone is not None
            result = await self.client.send_template(contact.phone, contact.template, callback_data(contact, attempt))
            self._observe(result)
            if isinstance(result, Accepted):
                self._accepted_at[result.wamid] = time.monotonic()
                while len(self._accepted_at) > ACCEPTED_KEPT:
                    self._accepted_at.popitem(last=False)
            signal = result_signal(result, attempt, self.ambiguous_timeout_s)
            await self.engine.signal(key, signal)
            if isinstance(result, Failed) and result.code == 130429:
                self.backoff.rate_limited(time.monotonic())
            if isinstance(result, Failed) and result.error_class is ErrorClass.ACCOUNT:
                await self._account_error(result.code, result.title)
        finally:
            self._active[contact.campaign_id] -= 1
            if self._active[contact.campaign_id] <= 0:
                del self._active[contact.campaign_id]

    def _observe(self, result: SendResult) -> None:
        match result:
            case Accepted(elapsed_s=elapsed):
                outcome, code = "accepted", ""
            case Failed(error_class, code_, _, _, _, elapsed):
                outcome, code = str(error_class), "" if code_ is None else str(code_)
            case TimedOut(written, elapsed):
                outcome, code = ("ambiguous_timeout" if written else "timeout"), ""
        self.recorder.wa_requests.labels(outcome, code).inc()
        self.recorder.wa_request_duration.observe(elapsed)

    async def _account_error(self, code: int | None, title: str | None) -> None:
        self.recorder.wa_account_errors.inc()
        reason = f"whatsapp_account_error:{code}" + (f" {title}" if title else "")
        self.state = "down"
        paused = await self.engine.auto_pause(Channel.WHATSAPP, reason)
        log.error("whatsapp account-level error, campaigns paused", extra={"code": code, "campaigns": paused})

    # -- webhooks ------------------------------------------------------------------------------------
    async def on_notification(self, note: Notification) -> None:
        """Apply every status, inbound message and notice of one POST in one transaction (statuses first,
        then messages and notices in the POST's order); returns once it is committed."""
        statuses = note.statuses()
        messages = inbound_messages(note)
        notes = notices(note)
        taken = Taken(notices=notes.notices)
        for _ in range(messages.skipped + notes.skipped):
            self.recorder.wa_webhooks.labels("incoming_ignored").inc()
        if statuses or messages.messages or notes.notices:

            def work(unit: Unit) -> list[str]:
                outcomes = [self._apply_status(unit, s) for s in statuses]
                for m in messages.messages:
                    apply_message(unit, m, self.phone_number_id, self.engine.gateway_id, taken)
                for n in notes.notices:
                    apply_notice(unit, n, self.phone_number_id, self.engine.gateway_id)
                return outcomes

            outcomes = await self.engine.execute(work)
            now = time.monotonic()
            for status, outcome in zip(statuses, outcomes, strict=True):
                self.recorder.wa_webhooks.labels(outcome).inc()
                kind = "read" if status.status in ("read", "played") else status.status
                if outcome == "applied" and kind in ("delivered", "read"):
                    sent = (
                        self._accepted_at.pop(status.id, None) if kind == "read" else self._accepted_at.get(status.id)
                    )
                    if sent is not None:
                        self.recorder.wa_time_to_status.labels(kind).observe(now - sent)
            self._observe_inbound(taken)
        for err in note.errors():
            self.recorder.wa_webhooks.labels("account_error" if is_account_level(err.code) else "value_error").inc()
            log.warning("whatsapp webhook error", extra={"code": err.code, "title": err.text})
            if is_account_level(err.code):
                await self._account_error(err.code, err.text)

    def _observe_inbound(self, taken: Taken) -> None:
        for kind, n in taken.messages.items():
            self.recorder.wa_inbound.labels(kind if kind in INBOUND_TYPES else "other").inc(n)
        for outcome, n in taken.outcomes.items():
            self.recorder.wa_replies.labels(outcome).inc(n)
        for notice in taken.notices:
            self.recorder.wa_notices.labels(notice.field if notice.field in NOTICE_FIELDS else "other").inc()
            if isinstance(notice, PhoneQualityNotice) and notice.event:
                self.recorder.wa_phone_quality_events.labels(notice.event.lower()[:32]).inc()
            if isinstance(notice, TemplateQualityNotice) and notice.new_quality_score:
                score = QUALITY.get(notice.new_quality_score.upper(), 0)
                self.recorder.wa_template_quality.labels(str(notice.message_template_name)[:64]).set(score)

    def _apply_status(self, unit: Unit, status: Status) -> str:
        signal = status_signal(status)
        if signal is None:
            return "unknown_status"
        key = unit.read.lookup_wamid(status.id)
        if key is None:
            parsed = parse_callback(status.biz_opaque_callback_data)
            if parsed is None:
                return "unmatched"
            key = parsed[0]
            unit.map_wamid(status.id, key)
        decision = unit.apply(key, signal)
        if decision.refused == "unknown_contact":
            return "unmatched"
        if decision.events:
            return "applied"
        return decision.absorbed or ("illegal" if decision.illegal else "no_change")
