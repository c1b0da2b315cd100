"""Writes the Grafana dashboards in deploy/grafana/dashboards/ from the panel lists below.

    python -m tools.gen_dashboards          # write
    python -m tools.gen_dashboards --check  # exit 1 if a file differs (the test suite runs this)

One list of panels per dashboard and data source keeps the PromQL and InfluxQL side by side; every
query here is evaluated against a live gateway by tests/integration/test_observability.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "dashboards"
PROM = {"type": "prometheus", "uid": "telgate-prometheus"}
INFLUX = {"type": "influxdb", "uid": "telgate-influxdb"}

# (title, unit, [(query, legend)]); a plain string starts a row of that title (the panels after it)
Panel = tuple[str, str, list[tuple[str, str]]]
Entry = Panel | str

# the store's gauges: every instance of a cluster reports the same value (SPEC §11), so a panel takes max
_FROM_STORE = (
    "From the store, not from this instance: every instance of a cluster reports the same totals, so the"
    " query takes max (a sum would count them once per instance)."
)
# a Prometheus panel's description, by (dashboard, title)
DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("Campaigns", "Contacts per status"): _FROM_STORE,
    ("Gateway", "Outbox pending"): _FROM_STORE,
    ("WhatsApp", "Delivery, read and reply rates per campaign"): (
        "Of the campaign's contacts now sent or beyond (delivery_failed included): delivered, read or replied"
        " (delivered), and replied (replied); read or replied of those delivered (read). A contact counts in"
        " every status below the one it reached: a reply implies delivered and read. From the store's contact"
        " counts, so restarts and other instances change nothing."
    ),
    ("WhatsApp", "Replies by outcome"): (
        "Replies matched to a contact since each instance started, by the outcome the campaign's replies rules"
        " gave them (confirm, decline, opt_out, other), summed over the instances. An opt_out blacklists the"
        " number."
    ),
    ("WhatsApp", "Notices by field"): (
        "Meta's notices since each instance started, by webhook field (user_preferences,"
        " message_template_status_update, message_template_quality_update, phone_number_quality_update,"
        " account_update, ...), summed over the instances."
    ),
    ("WhatsApp", "Marketing sends refused"): (
        "Sends of MARKETING templates refused before the Cloud API because the number stopped marketing"
        " messages (user_preferences stop; Meta would answer 131050), summed over the instances."
    ),
    ("WhatsApp", "Template quality"): (
        "Each template's quality as Meta last rated it in a notice this instance received: 3 green, 2 yellow,"
        " 1 red (alert TelgateWhatsAppTemplateRed), 0 unknown. Empty until Meta sends a rating."
    ),
    ("WhatsApp", "Phone number quality events"): (
        "phone_number_quality_update notices since each instance started, by event (upgrade, downgrade,"
        " flagged, unflagged); a downgrade or a flag raises TelgateWhatsAppPhoneQualityDropped."
    ),
    ("Gateway", "Oldest unacknowledged event"): _FROM_STORE,
    ("Campaigns", "Abandonment rate per campaign"): (
        "A predictive campaign's abandoned share of the calls a person answered, over its rolling abandon_window"
        " (24h or 30d), as the instance that decided its last live answer left it (max over the instances)."
        " Above max_abandon_rate (3 %) the campaign pauses itself (alert TelgateCampaignAbandonRate)."
    ),
    ("Campaigns", "Dials held back (window, caps)"): (
        "Due dials the gateway held back instead of placing (retry_scheduled with retry_at, no INVITE), by"
        " reason: outside_window (the callee's local hours), max_attempts, after_refusal, after_opt_out,"
        " after_abandon (the number's caps over every campaign), summed over the instances."
    ),
    ("Campaigns", "AMD verdicts"): (
        "Answering-machine detection's verdicts per campaign (docs/voice.md §6.3), by answered_by: human,"
        " machine_start, fax, unknown (a person: the call goes on), and the greeting ends of the machines that"
        " get a message (machine_end_beep, machine_end_silence, machine_end_other), summed over the instances."
        " A campaign answered mostly by machine_start that should reach people may have a one-way media path:"
        " a callee whose RTP telgate does not hear is silence, and silence is a machine (INITIALSILENCE); the"
        " events' amd_cause tells."
    ),
    ("Campaigns", "AMD decision time"): (
        "From the answer to the verdict, per campaign (p50 and p95 over the instances). A held call"
        " (amd.wait, leave_message, predictive) is silent this long: app_amd's defaults decide a person about"
        " after_greeting_silence_ms (800) after their hello, a silent line at initial_silence_ms (2500), and"
        " nothing later than total_analysis_ms (5000, unknown)."
    ),
    ("Campaigns", "Digit gathers by finish and outcome"): (
        "Gathers ended after a prompt (docs/voice.md §6.4), by what ended them (max_digits, finish_on_key,"
        " timeout) and what the contact's digits map made of the input (confirm, opt_out, transfer, retry;"
        " no_input when nothing was pressed or the input has no entry), summed over the instances."
    ),
    ("Campaigns", "Digits by source"): (
        "Keys counted into gathers, by how they came: rfc4733 (telephone-events), info (SIP INFO) or inband"
        " (tones in the audio). A press told by two sources counts once, under the first. Keys pressed"
        " during the prompt are not counted."
    ),
    ("Gateway", "Cluster members"): (
        "Instances holding a live lease in the store, as each instance counts them: the lines agree but for"
        " a few seconds around a join, a stop or a takeover. The cluster's limits (sip.max_cps,"
        " max_concurrent_calls, whatsapp.max_mps, campaigns' max_cps) are shared by this many."
    ),
    ("Gateway", "Outbox partitions per instance"): (
        "Each instance publishes the events of the partitions it holds, a fair share of 64. The sum is 64"
        " when every partition is held and every member is scraped (alert TelgateClusterPartitionsUnheld)."
    ),
    ("Gateway", "Outbox rows moved to the dead letters"): (
        "Events and command results that can never be published (a topic no client may publish to, a payload"
        " over the limit, a refusal by the client or the broker's ACL), set aside and never retried, summed"
        " over the instances (alert TelgateOutboxDeadLetters). `telgate dead-letters` lists them with the reason."
    ),
    ("Gateway", "Takeovers"): (
        "Members whose lease expired (crashed, hung, cut off from the store) and that this instance buried:"
        " it settled their calls and sends by the restart rule and took their events, timers and queue."
    ),
}

# WhatsApp contacts of each campaign now, by status (the store's gauge, as "Contacts per status"): a contact
# is in one status, and the one it reached says which it passed (a reply implies delivered and read)
_WA_SENT = "sent|delivered|read|replied|delivery_failed"


def _wa_contacts(statuses: str) -> str:
    return (
        f'sum by (campaign) (max by (campaign, status) (telgate_contacts{{channel="whatsapp",status=~"{statuses}"}}))'
    )


def _wa_rate(part: str, whole: str) -> str:
    """Contacts in `part` of those in `whole`, per campaign; 0 (not no line) while none is in `part`."""
    return f"({_wa_contacts(part)} or 0 * {_wa_contacts(whole)}) / clamp_min({_wa_contacts(whole)}, 1)"


PROMETHEUS: dict[str, list[Entry]] = {
    "Campaigns": [
        (
            "Contacts per status",
            "none",
            [("max by (campaign, channel, status) (telgate_contacts)", "{{campaign}} {{status}}")],
        ),
        (
            "Transitions / s",
            "ops",
            [("sum by (channel, status) (rate(telgate_contact_transitions_total[5m]))", "{{channel}} {{status}}")],
        ),
        (
            "Call attempts per voice contact",
            "none",
            [
                (
                    "sum(telgate_call_attempts_total) / clamp_min(sum(telgate_contact_transitions_total"
                    '{channel="voice",status="initial"}), 1)',
                    "attempts / contact",
                )
            ],
        ),
        ("Commands / s", "ops", [("sum by (kind, result) (rate(telgate_commands_total[5m]))", "{{kind}} {{result}}")]),
        # lawful calling (docs/lawful-calling.md)
        (
            "Abandonment rate per campaign",
            "percentunit",
            [("max by (campaign) (telgate_campaign_abandon_rate)", "{{campaign}}")],
        ),
        (
            "Abandoned calls",
            "none",
            [("sum by (campaign) (increase(telgate_calls_abandoned_total[15m]))", "{{campaign}}")],
        ),
        (
            "Dials held back (window, caps)",
            "none",
            [("sum by (campaign, reason) (increase(telgate_dials_held_total[15m]))", "{{campaign}} {{reason}}")],
        ),
        # who answered and what they pressed (docs/voice.md §6.3, §6.4)
        "Who answered and what they pressed",
        (
            "AMD verdicts",
            "none",
            [
                (
                    "sum by (campaign, answered_by) (increase(telgate_amd_results_total[15m]))",
                    "{{campaign}} {{answered_by}}",
                )
            ],
        ),
        (
            "AMD decision time",
            "s",
            [
                (
                    "histogram_quantile(0.5, sum by (le, campaign) (rate(telgate_amd_decision_seconds_bucket[15m])))",
                    "p50 {{campaign}}",
                ),
                (
                    "histogram_quantile(0.95, sum by (le, campaign) (rate(telgate_amd_decision_seconds_bucket[15m])))",
                    "p95 {{campaign}}",
                ),
            ],
        ),
        (
            "Digit gathers by finish and outcome",
            "none",
            [
                (
                    "sum by (campaign, finish, outcome) (increase(telgate_dtmf_gathers_total[15m]))",
                    "{{campaign}} {{finish}} {{outcome}}",
                )
            ],
        ),
        (
            "Digits by source",
            "none",
            [("sum by (campaign, via) (increase(telgate_dtmf_digits_total[15m]))", "{{campaign}} {{via}}")],
        ),
    ],
    "Voice": [
        ("Call attempts / s", "ops", [("sum by (outcome) (rate(telgate_call_attempts_total[5m]))", "{{outcome}}")]),
        ("Concurrent calls", "none", [("sum by (state) (telgate_calls_active)", "{{state}}")]),
        (
            "ASR (answered / attempts)",
            "percentunit",
            [
                (
                    'sum(rate(telgate_call_attempts_total{outcome="answered"}[15m]))'
                    " / clamp_min(sum(rate(telgate_call_attempts_total[15m])), 1e-9)",
                    "ASR",
                )
            ],
        ),
        (
            "NER (attempts the network carried)",
            "percentunit",
            [
                (
                    '1 - sum(rate(telgate_call_attempts_total{outcome="failed"}[15m]))'
                    " / clamp_min(sum(rate(telgate_call_attempts_total[15m])), 1e-9)",
                    "NER",
                )
            ],
        ),
        (
            "ACD (average call duration)",
            "s",
            [
                (
                    "sum(rate(telgate_call_duration_seconds_sum[15m]))"
                    " / clamp_min(sum(rate(telgate_call_duration_seconds_count[15m])), 1e-9)",
                    "ACD",
                )
            ],
        ),
        (
            "Post-dial delay",
            "s",
            [
                (
                    "histogram_quantile(0.5, sum by (le) (rate(telgate_call_post_dial_delay_seconds_bucket[15m])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.95, sum by (le) (rate(telgate_call_post_dial_delay_seconds_bucket[15m])))",
                    "p95",
                ),
            ],
        ),
        (
            "SIP responses to INVITE / s",
            "ops",
            [('sum by (code) (rate(telgate_sip_responses_total{method="INVITE"}[5m]))', "{{code}}")],
        ),
        (
            "SIP retransmissions / s",
            "ops",
            [("sum by (method) (rate(telgate_sip_retransmissions_total[5m]))", "{{method}}")],
        ),
        ("PBX up", "none", [("telgate_pbx_up", "{{instance}} {{pbx}}")]),
        (
            "OPTIONS round trip (p95)",
            "s",
            [
                (
                    "histogram_quantile(0.95, sum by (le, pbx) (rate(telgate_pbx_options_rtt_seconds_bucket[5m])))",
                    "p95 {{pbx}}",
                )
            ],
        ),
    ],
    "WhatsApp": [
        ("Sends / s", "ops", [("sum by (outcome) (rate(telgate_whatsapp_requests_total[5m]))", "{{outcome}}")]),
        (
            "Delivery, read and reply rates per campaign",
            "percentunit",
            [
                (_wa_rate("delivered|read|replied", _WA_SENT), "delivered {{campaign}}"),
                (_wa_rate("read|replied", "delivered|read|replied"), "read {{campaign}}"),
                (_wa_rate("replied", _WA_SENT), "replied {{campaign}}"),
            ],
        ),
        (
            "Time to delivered and to read (p50)",
            "s",
            [
                (
                    "histogram_quantile(0.5, sum by (le, status) "
                    "(rate(telgate_whatsapp_time_to_status_seconds_bucket[15m])))",
                    "{{status}}",
                )
            ],
        ),
        (
            "Failures by error code",
            "ops",
            [
                (
                    'sum by (error_code) (rate(telgate_whatsapp_requests_total{outcome!="accepted"}[15m]))',
                    "{{error_code}}",
                )
            ],
        ),
        (
            "Webhook statuses by result / s",
            "ops",
            [("sum by (result) (rate(telgate_whatsapp_webhooks_total[5m]))", "{{result}}")],
        ),
        (
            "Send request duration (p95)",
            "s",
            [
                (
                    "histogram_quantile(0.95, sum by (le) "
                    "(rate(telgate_whatsapp_request_duration_seconds_bucket[5m])))",
                    "p95",
                )
            ],
        ),
        # what customers send back and what Meta says about the account (SPEC §5.2 `replied`, §6.2)
        "Replies and Meta's notices",
        (
            "Inbound messages by type / s",
            "ops",
            [("sum by (type) (rate(telgate_whatsapp_inbound_messages_total[5m]))", "{{type}}")],
        ),
        ("Replies by outcome", "none", [("sum by (outcome) (telgate_whatsapp_replies_total)", "{{outcome}}")]),
        ("Notices by field", "none", [("sum by (field) (telgate_whatsapp_notices_total)", "{{field}}")]),
        (
            "Marketing sends refused",
            "none",
            [("sum(increase(telgate_whatsapp_marketing_refused_total[1h]))", "refused in the last hour")],
        ),
        ("Template quality", "none", [("telgate_whatsapp_template_quality", "{{template}} {{instance}}")]),
        (
            "Phone number quality events",
            "none",
            [("sum by (event) (telgate_whatsapp_phone_quality_events_total)", "{{event}}")],
        ),
    ],
    "Gateway": [
        ("Outbox pending", "none", [("max(telgate_outbox_pending)", "pending")]),
        ("Oldest unacknowledged event", "s", [("max(telgate_outbox_oldest_age_seconds)", "oldest")]),
        ("Bus connected", "none", [("telgate_bus_connected", "{{instance}}")]),
        ("Events published / s", "ops", [("rate(telgate_events_published_total[5m])", "{{instance}}")]),
        (
            "Illegal transitions / s",
            "ops",
            [("sum by (channel) (rate(telgate_illegal_transitions_total[15m]))", "{{channel}}")],
        ),
        (
            "Commands rejected / s",
            "ops",
            [('sum by (kind, result) (rate(telgate_commands_total{result!="accepted"}[15m]))', "{{kind}} {{result}}")],
        ),
        (
            "Commands failed inside the gateway (internal_error)",
            "none",
            [("sum by (kind) (increase(telgate_commands_failed_total[15m]))", "{{kind}}")],
        ),
        (
            "Outbox rows moved to the dead letters",
            "none",
            [("sum by (reason) (increase(telgate_outbox_dead_letters_total[15m]))", "{{reason}}")],
        ),
        (
            "Campaigns paused by the gateway",
            "none",
            [("sum by (cause) (telgate_campaign_auto_pauses_total)", "{{cause}}")],
        ),
        ("Resident memory", "bytes", [("process_resident_memory_bytes", "{{instance}}")]),
        ("CPU", "percentunit", [("rate(process_cpu_seconds_total[5m])", "{{instance}}")]),
        ("Build", "none", [("telgate_build_info", "{{version}}")]),
        # several instances on one store (SPEC §11): what each one holds and does, by `instance`
        "Cluster",
        ("Cluster members", "none", [("telgate_cluster_members", "{{instance}}")]),
        (
            "Outbox partitions per instance",
            "none",
            [
                ("telgate_cluster_partitions", "{{instance}}"),
                ("sum(telgate_cluster_partitions)", "held (of 64)"),
            ],
        ),
        ("Takeovers", "none", [("sum by (instance) (increase(telgate_cluster_takeovers_total[15m]))", "{{instance}}")]),
        (
            "Events published / s per instance",
            "ops",
            [("sum by (instance) (rate(telgate_events_published_total[5m]))", "{{instance}}")],
        ),
        (
            "Commands / s per instance",
            "ops",
            [("sum by (instance) (rate(telgate_commands_total[5m]))", "{{instance}}")],
        ),
        ("Concurrent calls per instance", "none", [("sum by (instance) (telgate_calls_active)", "{{instance}}")]),
        (
            "WhatsApp sends / s per instance",
            "ops",
            [("sum by (instance) (rate(telgate_whatsapp_requests_total[5m]))", "{{instance}}")],
        ),
    ],
}

# telgate_calls and telgate_whatsapp are what each instance counted (tag `gateway`): grouped by it too, or
# last() would pick whichever instance wrote last; telgate_contacts comes from the store, alike on all
_T = "$timeFilter GROUP BY time($__interval)"
_G = _T + ', "campaign", "gateway"'
INFLUXDB: dict[str, list[Entry]] = {
    "Campaigns": [
        (
            "Contacts per status",
            "none",
            [
                (
                    f'SELECT last("count") FROM "telgate_contacts" WHERE {_T}, "campaign", "status" fill(previous)',
                    "$tag_campaign $tag_status",
                )
            ],
        ),
        (
            "Call attempts per campaign",
            "none",
            [
                (
                    f'SELECT last("attempts") FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway",
                )
            ],
        ),
        (
            "WhatsApp messages sent per campaign",
            "none",
            [
                (
                    f'SELECT last("sent") FROM "telgate_whatsapp" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway",
                )
            ],
        ),
    ],
    "Voice": [
        (
            "Call attempts / s",
            "ops",
            [
                (
                    f'SELECT non_negative_derivative(last("attempts"), 1s) FROM "telgate_calls" WHERE {_G}',
                    "$tag_campaign $tag_gateway",
                )
            ],
        ),
        (
            "Concurrent calls",
            "none",
            [
                (
                    f'SELECT last("active") FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway",
                )
            ],
        ),
        (
            "ASR",
            "percentunit",
            [
                (
                    f'SELECT last("asr") FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway",
                )
            ],
        ),
        (
            "NER",
            "percentunit",
            [
                (
                    f'SELECT last("ner") FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway",
                )
            ],
        ),
        (
            "ACD",
            "s",
            [
                (
                    f'SELECT last("acd_s") FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway",
                )
            ],
        ),
        (
            "Post-dial delay",
            "ms",
            [
                (
                    f'SELECT last("pdd_ms_p50") FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "p50 $tag_campaign $tag_gateway",
                ),
                (
                    f'SELECT last("pdd_ms_p95") FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "p95 $tag_campaign $tag_gateway",
                ),
            ],
        ),
        (
            "Outcomes",
            "none",
            [
                (
                    'SELECT last("answered") AS "answered", last("rejected") AS "rejected", '
                    'last("unreachable") AS "unreachable", last("failed") AS "failed" '
                    f'FROM "telgate_calls" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway $col",
                )
            ],
        ),
        (
            "PBX up",
            "none",
            [(f'SELECT last("pbx_up") FROM "telgate_gateway" WHERE {_T}, "gateway" fill(previous)', "$tag_gateway")],
        ),
    ],
    "WhatsApp": [
        (
            "Sent, delivered, read, replied, failed",
            "none",
            [
                (
                    'SELECT last("sent") AS "sent", last("delivered") AS "delivered", last("read") AS "read", '
                    'last("replied") AS "replied", last("failed") AS "failed" '
                    f'FROM "telgate_whatsapp" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway $col",
                )
            ],
        ),
        (
            "Delivery, read and reply rates",
            "percentunit",
            [
                (
                    'SELECT last("delivery_rate") AS "delivered", last("read_rate") AS "read", '
                    f'last("reply_rate") AS "replied" FROM "telgate_whatsapp" WHERE {_G} fill(previous)',
                    "$tag_campaign $tag_gateway $col",
                )
            ],
        ),
    ],
    "Gateway": [
        (
            "Outbox pending",
            "none",
            [
                (
                    f'SELECT last("outbox_pending") FROM "telgate_gateway" WHERE {_T}, "gateway" fill(previous)',
                    "$tag_gateway",
                )
            ],
        ),
        (
            "Bus connected",
            "none",
            [
                (
                    f'SELECT last("bus_connected") FROM "telgate_gateway" WHERE {_T}, "gateway" fill(previous)',
                    "$tag_gateway",
                )
            ],
        ),
    ],
}


def dashboard(name: str, source: str, panels: list[Entry]) -> dict[str, Any]:
    ds = PROM if source == "prometheus" else INFLUX
    out: list[dict[str, Any]] = []
    y, column = 0, 0  # where the next panel goes: two panels a row, a row header across the width
    for entry in panels:
        if isinstance(entry, str):
            y += 8 if column else 0
            out.append(
                {
                    "id": len(out) + 1,
                    "type": "row",
                    "title": entry,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y, column = y + 1, 0
            continue
        title, unit, queries = entry
        targets: list[dict[str, Any]] = []
        for j, (query, legend) in enumerate(queries):
            ref = chr(ord("A") + j)
            if source == "prometheus":
                targets.append({"refId": ref, "datasource": ds, "expr": query, "legendFormat": legend})
            else:
                targets.append(
                    {
                        "refId": ref,
                        "datasource": ds,
                        "query": query,
                        "rawQuery": True,
                        "resultFormat": "time_series",
                        "alias": legend,
                    }
                )
        panel: dict[str, Any] = {
            "id": len(out) + 1,
            "type": "timeseries",
            "title": title,
            "datasource": ds,
            "gridPos": {"h": 8, "w": 12, "x": 12 * column, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
            "targets": targets,
        }
        if source == "prometheus" and (name, title) in DESCRIPTIONS:
            panel["description"] = DESCRIPTIONS[(name, title)]
        out.append(panel)
        y, column = (y + 8, 0) if column else (y, 1)
    return {
        "uid": f"telgate-{name.lower()}-{source}",
        "title": f"telgate · {name} ({'Prometheus' if source == 'prometheus' else 'InfluxDB'})",
        "tags": ["telgate", source],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": []},
        "panels": out,
    }


def render() -> dict[Path, str]:
    files: dict[Path, str] = {}
    for source, boards in (("prometheus", PROMETHEUS), ("influxdb", INFLUXDB)):
        for name, panels in boards.items():
            path = OUT / source / f"{name.lower()}.json"
            files[path] = json.dumps(dashboard(name, source, panels), indent=2) + "\n"
    return files


def queries(source: str) -> list[tuple[str, str, str]]:
    """(dashboard, panel, query) for every panel query of one data source, as the tests evaluate them."""
    boards = PROMETHEUS if source == "prometheus" else INFLUXDB
    return [
        (name, title, q)
        for name, panels in boards.items()
        for title, _, qs in (p for p in panels if not isinstance(p, str))
        for q, _ in qs
    ]


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for path, text in render().items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("stale dashboards (run python -m tools.gen_dashboards):\n" + "\n".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
