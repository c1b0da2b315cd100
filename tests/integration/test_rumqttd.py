"""The gateway on a second, independent MQTT 5 broker (rumqttd, tests/support/rumqttd.py): its shared
subscription, manual PUBACKs, persistent session, retained presence and the MQTT 5 reply properties are
not Mosquitto's alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import backend, gateway, settings_for
from tests.support.rumqttd import Rumqttd

pytestmark = pytest.mark.integration


@pytest.fixture
def rumqttd(tmp_path: Path) -> Iterator[Rumqttd]:
    broker = Rumqttd(tmp_path / "rumqttd")
    broker.start()
    yield broker
    broker.stop()


async def test_a_command_and_its_result_through_rumqttd(rumqttd: Rumqttd, tmp_path: Path) -> None:
    async with backend(rumqttd.url) as b, gateway(settings_for(rumqttd.url, tmp_path)):
        await b.wait_for(lambda: b.presence.get("gw-test") == "online")
        await b.send(
            "campaign",
            {"command_id": "r1", "campaign_id": "rq", "action": "create"},
            response_topic="backend/replies",
            correlation=b"\x00rq-1",
        )
        await b.wait_for(lambda: b.result("r1") is not None and bool(b.responses))
        result = b.result("r1")
        assert result is not None and result["accepted"] and result["gateway_id"] == "gw-test", result
        assert b.responses == [(b"\x00rq-1", result)]  # to the Response Topic, with its Correlation Data
        await b.send("dial", {"command_id": "d1", "campaign_id": "rq", "contact_id": "k1", "phone": "+420601000010"})
        await b.wait_for(lambda: b.result("d1") is not None and b.statuses("rq", "k1") == ["initial"])
        assert b.campaigns and b.campaigns[-1]["campaign_id"] == "rq"
