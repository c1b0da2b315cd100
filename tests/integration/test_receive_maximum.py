"""The outbox stays within the broker's Receive Maximum (MQTT 5 §3.3.4): the CONNACK's value is read
(aiomqtt drops the CONNACK's properties) and bounds the rows awaiting their PUBACK."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bus import outbox_window
from tests.support.broker import SHIPPED, Mosquitto
from tests.support.harness import backend, gateway, settings_for

pytestmark = [pytest.mark.integration]


async def test_the_brokers_receive_maximum_bounds_the_outbox(broker: Mosquitto, tmp_path: Path) -> None:
    shipped = next(
        int(line.split()[1]) for line in SHIPPED.read_text().splitlines() if line.startswith("max_inflight_messages")
    )
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        await b.wait_for(lambda: app.bus.broker_receive_maximum is not None)
        assert app.bus.broker_receive_maximum == shipped  # Mosquitto says its max_inflight_messages
        assert outbox_window(app.bus.broker_receive_maximum) <= shipped - 1
        for i in range(150):  # more events than the window: published all the same, none lost
            await b.send("dial", {"command_id": f"d{i}", "campaign_id": "rm", "contact_id": f"k{i}",
                                  "phone": "+420601234560"})  # fmt: skip
        await b.wait_for(lambda: all(b.final("rm", f"k{i}") for i in range(150)), timeout=30)
