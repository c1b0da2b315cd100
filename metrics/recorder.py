"""The recorder: every metric of SPEC §8 that the core reports, on a registry of its own.

Metrics observe, they never decide. Label values are bounded: channel, status, kind, result, and the
campaign id only while `campaign_label` is on.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector


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
        self.commands = Counter("telgate_commands", "Commands by kind and result", ["kind", "result"], registry=r)
        self.events_published = Counter(
            "telgate_events_published", "Bus messages acknowledged by the broker", registry=r
        )
        self.publish_refused = Counter(
            "telgate_bus_publish_refused", "Publishes the broker answered with an error", registry=r
        )
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
        self.pbx_up = Gauge("telgate_pbx_up", "1 while the PBX answers OPTIONS keepalives", registry=r)
        self.pbx_options_rtt = Histogram(
            "telgate_pbx_options_rtt_seconds",
            "Round trip of OPTIONS keepalives to the PBX",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.bus_connected = Gauge("telgate_bus_connected", "1 while connected to the MQTT broker", registry=r)
        self.call_transfers = Counter(
            "telgate_call_transfers", "Blind transfers (REFER) of answered calls by result", ["result"], registry=r
        )

    def _campaign(self, campaign: str) -> str:
        return campaign if self.campaign_label else ""

    def transition(self, channel: str, status: str, previous: str | None, campaign: str) -> None:
        c = self._campaign(campaign)
        self.transitions.labels(channel, status, c).inc()
        self.contacts.labels(channel, status, c).inc()
        if previous is not None:
            self.contacts.labels(channel, previous, c).dec()

    def set_contacts(self, rows: list[tuple[str, str, str, int]]) -> None:
        for campaign, channel, status, n in rows:
            self.contacts.labels(channel, status, self._campaign(campaign)).inc(n)

    def command(self, kind: str, result: str) -> None:
        self.commands.labels(kind, result).inc()

    def illegal_transition(self, channel: str) -> None:
        self.illegal.labels(channel).inc()

    def absorbed_signal(self, channel: str, why: str) -> None:
        self.absorbed.labels(channel, why).inc()
