"""The AsyncAPI 3 document of the bus and the JSON Schemas, generated from the payload models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from gateway import __version__
from gateway.contract.wire import (
    BULK_KINDS,
    COMMANDS,
    CampaignStatusEvent,
    CommandResult,
    ContactStatusEvent,
    InboundMessage,
    Presence,
    WhatsAppNotice,
)

# SPEC §3: what a backend must do when it sends commands (gateway/tools/submit.py is the reference client)
FLOW_CONTROL = (
    "Flow control (what a backend must do): every command gets exactly one CommandResult, matched by "
    "command_id (MQTT 5: name a Response Topic, e.g. {prefix}/v1/replies/{client_id}, and Correlation Data; "
    "MQTT 3.1.1: read {prefix}/v1/evt/command). Keep at most N commands without a result (a window; 8 bulk "
    "commands is plenty). Publish a command that got no result within T seconds (30) again with the same "
    "command_id: the gateway applies it once and answers every copy (repeats with duplicate: true and the "
    "stored result). Upload contact lists as bulk dial/send commands (contacts: 1 to 1,000 entries, 1 MiB). "
    "The broker drops QoS 1 messages beyond its per-session queue (Mosquitto: max_queued_messages, 1,000 by "
    "default); deploy/mosquitto/mosquitto.conf ships limits sized for an upload."
)

EVENTS: dict[str, type[BaseModel]] = {
    "ContactStatusEvent": ContactStatusEvent,
    "CampaignStatusEvent": CampaignStatusEvent,
    "CommandResult": CommandResult,
    "Presence": Presence,
    "InboundMessage": InboundMessage,
    "WhatsAppNotice": WhatsAppNotice,
}


def schemas() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for kind, model in COMMANDS.items():
        out[f"{kind.capitalize()}Command"] = model.model_json_schema(by_alias=True)
    for name, model in EVENTS.items():
        out[name] = model.model_json_schema(by_alias=True)
    return out


def document(prefix: str = "telgate") -> dict[str, Any]:
    all_schemas = schemas()
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for name in all_schemas:
        messages[name] = {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }

    def chan(cid: str, address: str, message: str, params: list[str], desc: str) -> None:
        channels[cid] = {
            "address": address,
            "description": desc,
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            **({"parameters": {p: {"description": p} for p in params}} if params else {}),
        }

    for kind in COMMANDS:
        name = f"{kind.capitalize()}Command"
        cid = f"cmd_{kind}"
        chan(
            cid,
            f"{prefix}/v1/cmd/{kind}",
            name,
            [],
            f"`{kind}` commands (QoS 1); the gateway subscribes $share/{{shared_group}}/{prefix}/v1/cmd/+. "
            + ("A bulk command (contacts) may be up to 1 MiB. " if kind in BULK_KINDS else "")
            + FLOW_CONTROL.replace("{prefix}", prefix),
        )
        operations[f"receive_{kind}"] = {"action": "receive", "channel": {"$ref": f"#/channels/{cid}"}}
    chan(
        "contact_events",
        prefix + "/v1/evt/contact/{channel}/{campaign_id}/{contact_id}",
        "ContactStatusEvent",
        ["channel", "campaign_id", "contact_id"],
        "Every change of a contact's status (QoS 1, at least once; deduplicate on event_id, order by sequence)",
    )
    chan(
        "campaign_events",
        prefix + "/v1/evt/campaign/{campaign_id}",
        "CampaignStatusEvent",
        ["campaign_id"],
        "Campaign status (retained)",
    )
    chan(
        "command_results",
        f"{prefix}/v1/evt/command",
        "CommandResult",
        [],
        "A result for every command; also sent to the MQTT 5 Response Topic with its Correlation Data. A bulk "
        "dial/send counts contacts_accepted and contacts_invalid and lists contacts_refused; a repeated "
        "command_id is answered with the stored result and duplicate: true",
    )
    chan(
        "presence",
        prefix + "/v1/gateways/{gateway_id}/status",
        "Presence",
        ["gateway_id"],
        "Gateway presence (retained; the MQTT will sets offline)",
    )
    chan(
        "inbound_messages",
        prefix + "/v1/evt/inbound/whatsapp/{phone_number_id}",
        "InboundMessage",
        ["phone_number_id"],
        "Every message a customer sends to the business number (QoS 1, at least once; deduplicate on wamid), "
        "committed before the webhook is answered; `context` names the message it answers and, when that is "
        "one of ours, its campaign and contact; `reply` what the gateway made of it",
    )
    chan(
        "whatsapp_notices",
        prefix + "/v1/evt/notice/whatsapp/{phone_number_id}",
        "WhatsAppNotice",
        ["phone_number_id"],
        "Meta's notices about the account (QoS 1, at least once): user_preferences (marketing stop/resume), "
        "message_template_status_update, message_template_quality_update, account_update, "
        "phone_number_quality_update, …, with what the gateway did (`effect`)",
    )
    for cid in (
        "contact_events",
        "campaign_events",
        "command_results",
        "presence",
        "inbound_messages",
        "whatsapp_notices",
    ):
        operations[f"send_{cid}"] = {"action": "send", "channel": {"$ref": f"#/channels/{cid}"}}
    defs: dict[str, Any] = {}
    flat: dict[str, Any] = {}
    for name, schema in all_schemas.items():
        for dname, d in schema.pop("$defs", {}).items():
            defs[dname] = d
        flat[name] = schema
    flat.update(defs)
    text = _rewrite_refs(flat)
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "telgate bus",
            "version": __version__,
            "description": "Commands in, contact-status events out. MQTT 5, QoS 1, UTF-8 JSON, 64 KiB max "
            "(a bulk dial/send: 1 MiB). Backends follow the flow control in the command channels' descriptions.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": text},
    }


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                v.replace("#/$defs/", "#/components/schemas/")
                if k == "$ref" and isinstance(v, str)
                else _rewrite_refs(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node
