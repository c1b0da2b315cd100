"""WhatsApp test rig: the Cloud API stand-in (real HTTP) and a gateway configured against it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway.domain.statuses import Channel
from gateway.service.app import App
from whatsapp.standin import Scenario, StandIn

from . import ledger
from .harness import Backend, gateway, settings_for

TOKEN = "EAAG-test-token"
SECRET = "app-secret-for-tests"
VERIFY = "verify-me"


def send(cid: str, contact: str, number: str, campaign: str = "wa", **kw: Any) -> dict[str, Any]:
    """A `send` command as a backend writes it (the number without +)."""
    return {
        "command_id": cid,
        "campaign_id": campaign,
        "contact_id": contact,
        "phone": f"+{number}",
        "template": {"name": "appointment_reminder", "language": "cs"},
        **kw,
    }


@contextlib.asynccontextmanager
async def wa_rig(
    broker_url: str,
    data_dir: Path,
    scenarios: dict[str, Scenario] | None = None,
    sections: dict[str, dict[str, Any]] | None = None,
    channels: tuple[Channel, ...] = (),
    **whatsapp: Any,
) -> AsyncIterator[tuple[App, StandIn]]:
    async with StandIn(
        access_token=TOKEN, app_secret=SECRET, webhook_url="http://127.0.0.1:9/unset", scenarios=scenarios or {}
    ) as standin:
        settings = settings_for(
            broker_url,
            data_dir,
            whatsapp={
                "api_base": standin.api_base,
                "phone_number_id": standin.phone_number_id,
                "access_token": TOKEN,
                "app_secret": SECRET,
                "verify_token": VERIFY,
                "max_mps": 500,
                **whatsapp,
            },
            **(sections or {}),
        )
        async with gateway(settings, channels=channels) as app:  # a scripted port for each of `channels`
            standin.webhook_url = f"http://127.0.0.1:{app.http_port}/webhooks/whatsapp"
            yield app, standin


async def wa_ledger(b: Backend, standin: StandIn, patience_s: float = 10.0) -> ledger.Comparison:
    """The wire ledger of the Cloud API stand-in: every send request it received (errors included), per
    contact from its `biz_opaque_callback_data`, against the attempts entering `in_progress` (SPEC §9)."""
    return await ledger.check(
        b, "whatsapp", ledger.standin_sends(standin.received), by="contact", patience_s=patience_s
    )
