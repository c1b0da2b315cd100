"""Regenerate docs/ from the code: docs/asyncapi.json and docs/schemas/*.json from the payload models,
docs/statuses.md from the domain's status vocabularies (gateway/domain/statuses.py).

`python -m tools.gen_docs`; tests/integration/test_service.py fails when any of them is stale.
"""

from __future__ import annotations

import json
from pathlib import Path

from gateway.contract.asyncapi import document, schemas
from gateway.domain.statuses import STATUSES, WA_RANK, CampaignStatus, Channel, Status

ROOT = Path(__file__).resolve().parents[1]

# What a label and `final` do not say, per status. Prose only: the statuses, labels and finality come
# from the domain, and a note for a status the channel no longer has fails the generation.
NOTES: dict[Channel, dict[Status, str]] = {
    Channel.VOICE: {},
    Channel.WHATSAPP: {
        Status.REPLIED: "the customer answered; `signal.reply` has the answer and its outcome "
        "([whatsapp.md](whatsapp.md))",
        Status.DELIVERY_FAILED: "a later `delivered`/`read` still wins",
    },
}
CAMPAIGN_NOTES: dict[CampaignStatus, str] = {
    CampaignStatus.PAUSED: "by command, or by the gateway with a `reason`",
}
INTRO: dict[Channel, str] = {
    Channel.VOICE: "## Voice (SPEC §5.1)",
    Channel.WHATSAPP: "## WhatsApp (SPEC §5.2; Tovie has no WhatsApp campaigns, so both profiles show the same labels)",
}


def statuses_markdown() -> str:
    """docs/statuses.md: every channel's statuses with their label per profile and `final`."""
    lines = [
        "# Statuses",
        "",
        "<!-- Generated from gateway/domain/statuses.py by `python -m tools.gen_docs`: do not edit. -->",
        "",
        "Every contact-status event carries the canonical `status`, its `label` in the campaign's profile",
        "(`mluvii` or `tovie`) and `final` (the contact's outcome is settled; on WhatsApp a later webhook",
        "may still move it up the ladder below). How a contact moves between them is the transition tables,",
        "[gateway/domain/tables.py](../gateway/domain/tables.py).",
    ]
    for channel, table in STATUSES.items():
        unknown = set(NOTES[channel]) - set(table)
        if unknown:
            raise AssertionError(f"notes for statuses {channel} does not have: {sorted(unknown)}")
        lines += ["", INTRO[channel], "", "| status | mluvii | Tovie | final | note |", "|---|---|---|---|---|"]
        for status, (mluvii, tovie, final) in table.items():
            note = NOTES[channel].get(status, "")
            lines.append(f"| `{status}` | {mluvii} | {tovie} | {'yes' if final else ''} | {note} |")
        if channel is Channel.WHATSAPP:
            ladder = " < ".join(f"`{s}`" for s in sorted(WA_RANK, key=WA_RANK.__getitem__))
            lines += ["", f"WhatsApp statuses only move up {ladder}."]
    lines += ["", "## Campaigns (SPEC §5.3)", ""]
    lines.append(
        " · ".join(f"`{c}`" + (f" ({CAMPAIGN_NOTES[c]})" if c in CAMPAIGN_NOTES else "") for c in CampaignStatus)
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    (ROOT / "docs" / "schemas").mkdir(parents=True, exist_ok=True)
    (ROOT / "docs" / "asyncapi.json").write_text(json.dumps(document(), indent=2) + "\n")
    for name, schema in schemas().items():
        (ROOT / "docs" / "schemas" / f"{name}.json").write_text(json.dumps(schema, indent=2) + "\n")
    (ROOT / "docs" / "statuses.md").write_text(statuses_markdown())


if __name__ == "__main__":
    main()
