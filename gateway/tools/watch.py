"""`telgate watch`: a live table of contacts per status, built from the bus alone."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from urllib.parse import urlsplit

import aiomqtt
from rich.live import Live
from rich.table import Table

from gateway.bus.mqtt_io import Receiver
from gateway.config import Settings
from gateway.contract.topics import Topics


class Tally:
    """Latest status per contact, deduplicated by event_id and ordered by sequence."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str, str], tuple[int, str]] = {}

    def add(self, event: dict[str, object]) -> bool:
        key = (str(event["channel"]), str(event["campaign_id"]), str(event["contact_id"]))
        seq = int(event["sequence"])  # type: ignore[call-overload]
        old = self.latest.get(key)
        if old is not None and old[0] >= seq:
            return False
        self.latest[key] = (seq, str(event["status"]))
        return True

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for (channel, campaign, _), (_, status) in self.latest.items():
            out[(campaign, channel)][status] += 1
        return out

    def table(self) -> Table:
        table = Table(title="telgate: contacts per status")
        table.add_column("campaign")
        table.add_column("channel")
        table.add_column("contacts", justify="right")
        table.add_column("statuses")
        for (campaign, channel), by_status in sorted(self.counts().items()):
            table.add_row(
                campaign,
                channel,
                str(sum(by_status.values())),
                "  ".join(f"{s}={n}" for s, n in sorted(by_status.items())),
            )
        return table


async def watch(settings: Settings, campaign: str | None, seconds: float | None) -> None:
    url = urlsplit(settings.bus.url)
    topic = Topics(settings.bus.topic_prefix).contacts(campaign)
    tally = Tally()
    deadline = None if seconds is None else time.monotonic() + seconds
    async with aiomqtt.Client(
        url.hostname or "127.0.0.1",
        url.port or 1883,
        username=settings.bus.username,
        password=settings.bus.password.get_secret_value() if settings.bus.password else None,
        protocol=aiomqtt.ProtocolVersion.V5 if settings.bus.protocol == 5 else aiomqtt.ProtocolVersion.V311,
    ) as client:
        await client.subscribe(topic, qos=1)
        # a timeout around anext(client.messages) can drop a message
        async with Receiver(client) as receiver:
            with Live(tally.table(), refresh_per_second=4) as live:
                while deadline is None or time.monotonic() < deadline:
                    remaining = None if deadline is None else max(0.01, deadline - time.monotonic())
                    message = await receiver.get(remaining)
                    if message is None:
                        break
                    try:
                        event = json.loads(message.payload)  # type: ignore[arg-type,unused-ignore]
                    except (TypeError, ValueError):
                        continue
                    if isinstance(event, dict) and tally.add(event):
                        live.update(tally.table())
