"""The recorder: every metric of SPEC §8 that the core reports, on a registry of its own.

Metrics observe, they never decide. Label values are bounded: channel, status, kind, result, and the
campaign id only while `campaign_label` is on.
"""

from __future__ import annotations

import functools
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .influx import Point

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PDD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0)
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
AMD_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)
STATUS_TIME_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
M = TypeVar("M", Counter, Gauge)
OUTCOMES = ("answered", "rejected", "unreachable", "invalid_number", "failed")
# a status reached counts every lower one it skipped: a reply implies delivered and read (SPEC §5.2)
WA_RANK = {"in_progress": 0, "sent": 1, "delivery_failed": 1, "delivered": 2, "read": 3, "replied": 4}
WA_FAILED = ("delivery_failed", "sending_failed", "error")
PHONE_QUALITY_EVENTS = ("upgrade", "downgrade", "flagged", "unflagged")
PAUSE_CAUSES = ("pbx_down", "whatsapp_account_error", "budget_spent", "abandon_rate", "other")
# why a due dial was held back (docs/lawful-calling.md): the callee's window, the number's caps
HELD_REASONS = ("outside_window", "max_attempts", "after_refusal", "after_opt_out", "after_abandon")
# why an outbox row can never be published (gateway/bus.py): a topic no MQTT client may publish to, a
# packet over the limit, another refusal by the client library, a PUBACK with a failure reason
DEAD_LETTER_REASONS = ("invalid_topic", "too_large", "client_refused", "broker_refused")


@dataclass
class CallKpi:
    """One campaign's call figures since start (the InfluxDB `telgate_calls` measurement)."""

    attempts: int = 0
    answered: int = 0
    rejected: int = 0
    unreachable: int = 0
    invalid_number: int = 0
    failed: int = 0
    active: int = 0
    talk_s: float = 0.0
    pdd_ms: deque[float] = field(default_factory=lambda: deque(maxlen=5000))

    @property
    def asr(self) -> float:
        return self.answered / self.attempts if self.attempts else 0.0

    @property
    def ner(self) -> float:
        """Network effectiveness: attempts the network carried to the callee (all but `failed`)."""
        return (self.attempts - self.failed) / self.attempts if self.attempts else 0.0

    @property
    def acd_s(self) -> float:
        return self.talk_s / self.answered if self.answered else 0.0

    def pdd_percentile(self, q: float) -> float:
        if not self.pdd_ms:
            return 0.0
        ordered = sorted(self.pdd_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class WhatsAppKpi:
    sent: int = 0
    delivered: int = 0
    read: int = 0
    replied: int = 0
    failed: int = 0

    def transition(self, status: str, previous: str | None) -> None:
        """Count one WhatsApp contact's status change (what the recorder and the demo both see)."""
        if status in WA_FAILED:
            self.failed += 1
            return
        new = WA_RANK.get(status)
        if new is None:
            return
        old = WA_RANK.get(previous or "", 0)
        if previous == "delivery_failed":
            self.failed -= 1  # a later delivered/read wins (SPEC §5.2)
        # a status reached counts every lower one it skipped (read without delivered was delivered)
        if old < 1 <= new:
            self.sent += 1
        if old < 2 <= new:
            self.delivered += 1
        if old < 3 <= new:
            self.read += 1
        if old < 4 <= new:
            self.replied += 1

    @property
    def delivery_rate(self) -> float:
        return self.delivered / self.sent if self.sent else 0.0

    @property
    def read_rate(self) -> float:
        return self.read / self.delivered if self.delivered else 0.0

    @property
    def reply_rate(self) -> float:
        """Contacts who answered, of those the message was sent to."""
        return self.replied / self.sent if self.sent else 0.0


class _SipCounters(Collector):
    """SIP responses and retransmissions, read from the user agent's own tallies at scrape time."""

    def __init__(self) -> None:
        self.responses: Callable[[], Tally[tuple[str, int]]] | None = None
        self.retransmissions: Callable[[], Tally[str]] | None = None
        self.dialogs: Callable[[str], int] | None = None  # the UA's own count of calls by state

    def collect(self) -> Iterator[CounterMetricFamily]:
        responses = CounterMetricFamily(
            "telgate_sip_responses",
            "SIP responses received, by request method and status code",
            labels=["method", "code"],
        )
        for (method, code), n in sorted((self.responses() if self.responses else Tally()).items()):
            responses.add_metric([method, str(code)], n)
        yield responses
        retrans = CounterMetricFamily(
            "telgate_sip_retransmissions", "SIP requests sent again by a transaction timer", labels=["method"]
        )
        for method, n in sorted((self.retransmissions() if self.retransmissions else Tally()).items()):
            retrans.add_metric([method], n)
        yield retrans


class Recorder:
    def __init__(self, version: str, campaign_label: bool = True, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.campaign_label = campaign_label
        r = self.registry
        ProcessCollector(registry=r)
        self.build_info = Info("telgate_build", "telgate build", registry=r)
        self.build_info.info({"version": version})
        self.transitions = Counter(
            "telgate_contact_transitions",
            "Contact status changes published",
            ["channel", "status", "campaign"],
            registry=r,
        )
        self.contacts = Gauge(
            "telgate_contacts", "Contacts by current status", ["channel", "status", "campaign"], registry=r
        )
        self._transition_children: dict[tuple[str, str, str], Counter] = {}
        self._contact_children: dict[tuple[str, str, str], Gauge] = {}
        self.commands = Counter("telgate_commands", "Commands by kind and result", ["kind", "result"], registry=r)
        self.wa_inbound = Counter(
            "telgate_whatsapp_inbound_messages",
            "Messages customers sent to the business number, by type (duplicate: a repeat of Meta's)",
            ["type"],
            registry=r,
        )
        self.wa_replies = Counter(
            "telgate_whatsapp_replies",
            "Replies matched to a contact, by the campaign's outcome",
            ["outcome"],
            registry=r,
        )
        self.wa_marketing_refused = Counter(
            "telgate_whatsapp_marketing_refused",
            "MARKETING template sends refused before the Cloud API: the number stopped marketing messages",
            registry=r,
        )
        self.wa_notices = Counter(
            "telgate_whatsapp_notices", "Meta's account notices, by webhook field", ["field"], registry=r
        )
        self.wa_phone_quality_events = Counter(
            "telgate_whatsapp_phone_quality_events",
            "phone_number_quality_update notices by event (upgrade, downgrade, flagged, unflagged)",
            ["event"],
            registry=r,
        )
        for event in PHONE_QUALITY_EVENTS:  # at 0 from the start: the alert's increase() sees the first one
            self.wa_phone_quality_events.labels(event)
        self.wa_template_quality = Gauge(
            "telgate_whatsapp_template_quality",
            "A template's quality as Meta last rated it: 3 green, 2 yellow, 1 red, 0 unknown",
            ["template"],
            registry=r,
        )
        self.commands_failed = Counter(
            "telgate_commands_failed",
            "Commands whose handling failed inside the gateway (answered internal_error, acknowledged)",
            ["kind", "code"],
            registry=r,
        )
        self.events_published = Counter(
            "telgate_events_published", "Bus messages acknowledged by the broker", registry=r
        )
        self.publish_refused = Counter(
            "telgate_bus_publish_refused", "Publishes the broker answered with an error", registry=r
        )
        self.dead_letters = Counter(
            "telgate_outbox_dead_letters",
            "Outbox rows that can never be published, moved to the dead letters",
            ["reason"],
            registry=r,
        )
        for reason in DEAD_LETTER_REASONS:  # at 0 from the start: increase() sees the first one
            self.dead_letters.labels(reason)
        self.illegal = Counter(
            "telgate_illegal_transitions", "Signals that were illegal in the contact's status", ["channel"], registry=r
        )
        self.absorbed = Counter(
            "telgate_signals_absorbed", "Duplicate, stale or recorded-only signals", ["channel", "why"], registry=r
        )
        self.outbox_pending = Gauge(
            "telgate_outbox_pending", "Bus messages committed, not yet acknowledged", registry=r
        )
        self.outbox_oldest = Gauge(
            "telgate_outbox_oldest_age_seconds", "Age of the oldest unacknowledged message", registry=r
        )
        self.wa_requests = Counter(
            "telgate_whatsapp_requests", "Cloud API send requests by outcome", ["outcome", "error_code"], registry=r
        )
        self.wa_request_duration = Histogram(
            "telgate_whatsapp_request_duration_seconds",
            "Cloud API send request duration",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.wa_webhooks = Counter(
            "telgate_whatsapp_webhooks", "Webhook statuses and POSTs by result", ["result"], registry=r
        )
        self.pbx_up = Gauge(
            "telgate_pbx_up",
            "1 while the PBX answers (any response: OPTIONS or a call's), per PBX address (sip/health.py)",
            ["pbx"],
            registry=r,
        )
        self.pbx_options_rtt = Histogram(
            "telgate_pbx_options_rtt_seconds",
            "Round trip of OPTIONS keepalives to the PBX, per PBX address",
            ["pbx"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.bus_connected = Gauge("telgate_bus_connected", "1 while connected to the MQTT broker", registry=r)
        self.cluster_members = Gauge(
            "telgate_cluster_members", "Instances holding a live lease in the store, this one included", registry=r
        )
        self.cluster_partitions = Gauge(
            "telgate_cluster_partitions", "Outbox partitions this instance holds (of 64)", registry=r
        )
        self.cluster_takeovers = Counter(
            "telgate_cluster_takeovers", "Members whose lease expired, buried by this instance", registry=r
        )
        self.call_transfers = Counter(
            "telgate_call_transfers", "Blind transfers (REFER) of answered calls by result", ["result"], registry=r
        )
        self.call_attempts = Counter("telgate_call_attempts", "Ended call attempts by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.call_attempts.labels(outcome)
        self.calls_active = Gauge("telgate_calls_active", "Calls up now", ["state"], registry=r)
        for state in ("ringing", "answered"):
            # read from the SIP user agent's own dialogs at scrape time: the gauge cannot count a call the
            # UA does not have, nor miss one it has (SPEC §9: what the metrics say is what is on the wire)
            self.calls_active.labels(state).set_function(functools.partial(self._dialogs, state))
        self.post_dial_delay = Histogram(
            "telgate_call_post_dial_delay_seconds",
            "From the INVITE to the first 180/183",
            registry=r,
            buckets=PDD_BUCKETS,
        )
        self.call_duration = Histogram(
            "telgate_call_duration_seconds", "Talk time of answered calls", registry=r, buckets=DURATION_BUCKETS
        )
        self.wa_time_to_status = Histogram(
            "telgate_whatsapp_time_to_status_seconds",
            "From the accepted send to the delivered / read webhook",
            ["status"],
            registry=r,
            buckets=STATUS_TIME_BUCKETS,
        )
        self.auto_pauses = Counter(
            "telgate_campaign_auto_pauses",
            "Campaigns the gateway paused itself, by cause",
            ["cause"],
            registry=r,
        )
        for cause in PAUSE_CAUSES:
            self.auto_pauses.labels(cause)
        for channel in ("voice", "whatsapp"):
            self.illegal.labels(channel)
        self.wa_account_errors = Counter(
            "telgate_whatsapp_account_errors",
            "Account-level errors from the Cloud API (send responses and webhook value.errors)",
            registry=r,
        )
        # who answered and what they pressed (docs/voice.md §6.3, §6.4), reported by the voice channel
        self.amd_results = Counter(
            "telgate_amd_results",
            "AMD verdicts (human, machine_start, fax, unknown) and machine greeting ends (machine_end_*)",
            ["campaign", "answered_by"],
            registry=r,
        )
        self.amd_decision = Histogram(
            "telgate_amd_decision_seconds",
            "From the answer to the AMD verdict",
            ["campaign"],
            registry=r,
            buckets=AMD_BUCKETS,
        )
        self.dtmf_gathers = Counter(
            "telgate_dtmf_gathers",
            "Digit gathers ended, by what ended them and what the digits map made of the input",
            ["campaign", "finish", "outcome"],
            registry=r,
        )
        self.dtmf_digits = Counter(
            "telgate_dtmf_digits", "Keys counted into gathers, by source", ["campaign", "via"], registry=r
        )
        # lawful calling (docs/lawful-calling.md)
        self.dials_held = Counter(
            "telgate_dials_held",
            "Due dials the gateway held back (no INVITE): outside the callee's window, or the number's caps",
            ["campaign", "reason"],
            registry=r,
        )
        self.calls_abandoned = Counter(
            "telgate_calls_abandoned",
            "Predictive calls answered by a person who reached no operator within abandon_after_s",
            ["campaign"],
            registry=r,
        )
        self.abandon_rate = Gauge(
            "telgate_campaign_abandon_rate",
            "A predictive campaign's abandoned share of live answers over its rolling window, at its last live answer",
            ["campaign"],
            registry=r,
        )
        self.sip = _SipCounters()
        r.register(self.sip)
        # per-campaign figures for InfluxDB, kept whatever `campaign_label` says (they never become labels)
        self.calls: dict[str, CallKpi] = {}
        self.whatsapp: dict[str, WhatsAppKpi] = {}
        self.counts: Tally[tuple[str, str, str]] = Tally()  # (campaign, channel, status) → contacts now

    def _campaign(self, campaign: str) -> str:
        return campaign if self.campaign_label else ""

    def transition(self, channel: str, status: str, previous: str | None, campaign: str) -> None:
        c = self._campaign(campaign)
        key = (channel, status, c)
        self._child(self._transition_children, self.transitions, key).inc()
        self._child(self._contact_children, self.contacts, key).inc()
        self.counts[(campaign, channel, status)] += 1
        if previous is not None:
            self._child(self._contact_children, self.contacts, (channel, previous, c)).dec()
            self.counts[(campaign, channel, previous)] -= 1
        if channel == "whatsapp":
            self.whatsapp.setdefault(campaign, WhatsAppKpi()).transition(status, previous)
        elif status == "abandoned":
            self.calls_abandoned.labels(c).inc()

    @staticmethod
    def _child(children: dict[tuple[str, str, str], M], metric: M, key: tuple[str, str, str]) -> M:
        """`metric.labels(*key)`, kept: every status change moves two or three series, and `labels` builds
        and checks its key under a lock each time (the children are never removed)."""
        child = children.get(key)
        if child is None:
            child = children[key] = metric.labels(*key)
        return child

    def campaign_auto_paused(self, reason: str) -> None:
        cause = reason.split(":", 1)[0].strip()
        self.auto_pauses.labels(cause if cause in PAUSE_CAUSES else "other").inc()

    # -- calls (reported by the voice channel) --------------------------------------------------------
    def _dialogs(self, state: str) -> int:
        return self.sip.dialogs(state) if self.sip.dialogs is not None else 0

    def call_placed(self, campaign: str) -> None:
        self.calls.setdefault(campaign, CallKpi()).active += 1

    def call_ringing(self, campaign: str, post_dial_delay_s: float) -> None:
        self.post_dial_delay.observe(post_dial_delay_s)
        self.calls.setdefault(campaign, CallKpi()).pdd_ms.append(post_dial_delay_s * 1000.0)

    def call_ended(self, campaign: str, outcome: str, answered: bool, duration_s: float | None) -> None:
        kpi = self.calls.setdefault(campaign, CallKpi())
        kpi.active -= 1
        outcome = "answered" if answered else outcome
        if outcome not in OUTCOMES:
            outcome = "failed"
        self.call_attempts.labels(outcome).inc()
        kpi.attempts += 1
        setattr(kpi, outcome, getattr(kpi, outcome) + 1)
        if answered and duration_s is not None:
            self.call_duration.observe(duration_s)
            kpi.talk_s += duration_s

    def amd_result(self, campaign: str, answered_by: str, decision_s: float | None) -> None:
        """An AMD verdict (with its time from the answer) or a machine greeting's end (None)."""
        c = self._campaign(campaign)
        self.amd_results.labels(c, answered_by).inc()
        if decision_s is not None:
            self.amd_decision.labels(c).observe(decision_s)

    def dtmf_gather(self, campaign: str, finish: str, outcome: str) -> None:
        self.dtmf_gathers.labels(self._campaign(campaign), finish, outcome).inc()

    def dtmf_digit(self, campaign: str, via: str) -> None:
        self.dtmf_digits.labels(self._campaign(campaign), via).inc()

    def set_contacts(self, rows: list[tuple[str, str, str, int]]) -> None:
        """Contacts per status as the store counts them (SPEC §11: every instance reports the store's
        totals, not the transitions it made itself). Replaces what the transitions counted since the
        last call: a status no longer in `rows` goes to 0. Between two calls the transitions this
        instance commits move the gauge at once."""
        counts: Tally[tuple[str, str, str]] = Tally()
        gauge: Tally[tuple[str, str, str]] = Tally()
        for campaign, channel, status, n in rows:
            counts[(campaign, channel, status)] += n
            gauge[(channel, status, self._campaign(campaign))] += n
        for key in [k for k in self.counts if k not in counts]:
            gauge.setdefault((key[1], key[2], self._campaign(key[0])), 0)
        for (channel, status, label), n in gauge.items():
            self.contacts.labels(channel, status, label).set(n)
        self.counts = counts

    def dial_held(self, campaign: str, reason: str) -> None:
        self.dials_held.labels(self._campaign(campaign), reason if reason in HELD_REASONS else "other").inc()

    def campaign_abandonment(self, campaign: str, rate: float) -> None:
        """The campaign's rolling abandonment rate, as its last live answer left it."""
        self.abandon_rate.labels(self._campaign(campaign)).set(rate)

    def command(self, kind: str, result: str) -> None:
        self.commands.labels(kind, result).inc()

    def command_failed(self, kind: str, code: str) -> None:
        self.commands_failed.labels(kind, code).inc()

    def start_commands_failed(self, kinds: Iterable[str], code: str) -> None:
        """Each kind's failure counter at 0 from the start: a panel and increase() see the first one."""
        for kind in kinds:
            self.commands_failed.labels(kind, code)

    def illegal_transition(self, channel: str) -> None:
        self.illegal.labels(channel).inc()

    def absorbed_signal(self, channel: str, why: str) -> None:
        self.absorbed.labels(channel, why).inc()


def influx_points(recorder: Recorder, gateway_id: str, now_ms: int, voice: bool) -> list[Point]:
    """The SPEC §8 measurements, from what the recorder holds now."""
    points: list[Point] = []
    for (campaign, channel, status), n in sorted(recorder.counts.items()):
        tags = {"gateway": gateway_id, "campaign": campaign, "channel": channel, "status": status}
        points.append(Point("telgate_contacts", tags, {"count": max(n, 0)}, now_ms))
    for campaign, kpi in sorted(recorder.calls.items()):
        fields: dict[str, int | float | bool | str] = {
            "attempts": kpi.attempts,
            "answered": kpi.answered,
            "rejected": kpi.rejected,
            "unreachable": kpi.unreachable,
            "invalid_number": kpi.invalid_number,
            "failed": kpi.failed,
            "active": max(kpi.active, 0),
            "asr": kpi.asr,
            "ner": kpi.ner,
            "acd_s": kpi.acd_s,
            "pdd_ms_p50": kpi.pdd_percentile(0.50),
            "pdd_ms_p95": kpi.pdd_percentile(0.95),
        }
        points.append(Point("telgate_calls", {"gateway": gateway_id, "campaign": campaign}, fields, now_ms))
    for campaign, wa in sorted(recorder.whatsapp.items()):
        fields = {
            "sent": wa.sent,
            "delivered": wa.delivered,
            "read": wa.read,
            "replied": wa.replied,
            "failed": wa.failed,
            "delivery_rate": wa.delivery_rate,
            "read_rate": wa.read_rate,
            "reply_rate": wa.reply_rate,
        }
        points.append(Point("telgate_whatsapp", {"gateway": gateway_id, "campaign": campaign}, fields, now_ms))
    sample = recorder.registry.get_sample_value
    gateway: dict[str, int | float | bool | str] = {
        "bus_connected": int(sample("telgate_bus_connected") or 0),
        "outbox_pending": int(sample("telgate_outbox_pending") or 0),
    }
    if voice:
        # 1 while any PBX is up (new calls have somewhere to go), as the presence's `pbx`
        ups = [s.value for m in recorder.pbx_up.collect() for s in m.samples]
        gateway["pbx_up"] = int(max(ups, default=0))
    points.append(Point("telgate_gateway", {"gateway": gateway_id}, gateway, now_ms))
    return points
