"""Two gateways in one command share group on a real Mosquitto with the shipped limits (SPEC §11).

Each gateway has its own SQLite store here (the commands are independent campaign creates, so where one
lands does not matter); what is checked is the bus: every command gets exactly one CommandResult, and a
member that stops for good (`leave_on_stop`) leaves nothing queued in its session. Mosquitto 2.0 goes on
routing a member's share to its offline session (eclipse-mosquitto#1747): the second test shows that a
plain stop keeps it so, as a single instance's restart needs. The leave runs on rumqttd too (it routes
a share to connected members only and keeps every session: what is checked there is that nothing is lost
or answered twice, and that the leave finishes on a broker that is not Mosquitto).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.broker import Mosquitto, free_port
from tests.support.harness import gateway, settings_for
from tests.support.rumqttd import Rumqttd
from tests.support.settle import bus_caught_up

pytestmark = pytest.mark.integration


@pytest.fixture(params=["mosquitto", "rumqttd"])
def any_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Mosquitto | Rumqttd]:
    """Mosquitto with the shipped limits, or rumqttd."""
    broker = Mosquitto(tmp_path / "mosquitto") if request.param == "mosquitto" else Rumqttd(tmp_path / "rumqttd")
    broker.start()
    yield broker
    broker.stop()


class Results:
    """CommandResults by command_id, from a paho subscriber on its own thread."""

    def __init__(self, port: int) -> None:
        self.by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"results-{port}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("telgate/v1/evt/command", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK: results published from now on could be missed"

    def _message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        data = json.loads(m.payload)
        with self.lock:
            self.by_id[data["command_id"]].append(data)

    def count(self, ids: set[str]) -> int:
        with self.lock:
            return len(ids & self.by_id.keys())

    def answered_by(self, gateway_id: str) -> int:
        with self.lock:
            return sum(1 for r in self.by_id.values() if r[0]["gateway_id"] == gateway_id)

    def by(self, cid: str) -> str:
        with self.lock:
            return str(self.by_id[cid][0]["gateway_id"])

    async def wait(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.count(ids) < len(ids):
            await asyncio.sleep(0.05)
        missing = ids - self.by_id.keys()
        assert not missing, f"{len(missing)} commands without a result after {timeout}s: {sorted(missing)[:5]}"

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def creates(first: int, n: int) -> list[str]:
    return [f"c{i}" for i in range(first, first + n)]


def publish_all(port: int, ids: list[str]) -> None:
    """A backend publishing as fast as it can (QoS 1, its PUBACKs awaited at the end)."""
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{free_port()}", protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [
        pub.publish(
            "telgate/v1/cmd/campaign",
            json.dumps({"command_id": cid, "campaign_id": f"k-{cid}", "action": "create"}),
            qos=1,
        )
        for cid in ids
    ]
    for info in infos:
        info.wait_for_publish(30)
    pub.loop_stop()
    pub.disconnect()


def session_present(port: int, client_id: str) -> bool:
    """Does the broker still hold a session for `client_id`? (Connects once, takes nothing, leaves it.)"""
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    probe.manual_ack_set(True)  # what a kept session delivers now stays unacknowledged, kept for its owner
    flags: list[bool] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, f: Any, _rc: Any, _p: Any) -> None:
        flags.append(bool(f.session_present))
        done.set()

    probe.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600  # a present session stays as it was
    probe.connect("127.0.0.1", port, clean_start=False, properties=props)
    probe.loop_start()
    assert done.wait(5)
    probe.disconnect()
    probe.loop_stop()
    return flags[0]


async def _disconnected(broker: Mosquitto, client_id: str, timeout_s: float = 10.0) -> None:
    """Return once Mosquitto's log says it has taken `client_id`'s DISCONNECT (and so its session expiry)."""
    log = broker.workdir / "mosquitto.log"
    line = re.compile(rf"^\d+: Client {re.escape(client_id)} disconnected\.$", re.MULTILINE)
    async with asyncio.timeout(timeout_s):
        while not (log.exists() and line.search(log.read_text(errors="replace"))):
            await asyncio.sleep(0.02)


def member(broker: Mosquitto | Rumqttd, tmp_path: Path, name: str, **bus: Any) -> Any:
    return settings_for(
        broker.url,
        tmp_path / name,
        gateway={"id": f"gw-{name}", "drain_timeout_s": 20},
        bus={"client_id": f"telgate-{name}", **bus},
    )


async def test_a_member_that_leaves_the_group_leaves_nothing_queued(
    any_broker: Mosquitto | Rumqttd, tmp_path: Path
) -> None:
    """A burst of commands over two members; one stops for good with `leave_on_stop` while the burst goes
    on (a small Receive Maximum keeps part of its share queued at Mosquitto), and publishing goes on after
    it left: every command gets exactly one result, all in time, and its session is gone."""
    broker = any_broker
    results = Results(broker.port)
    first, during, after = creates(0, 2000), creates(2000, 1500), creates(3500, 500)
    a_ctx = gateway(member(broker, tmp_path, "a", receive_maximum=4))
    try:
        async with gateway(member(broker, tmp_path, "b")):
            a = await a_ctx.__aenter__()
            a.bus.leave_on_stop = True
            burst = asyncio.create_task(asyncio.to_thread(publish_all, broker.port, first + during))
            await results.wait(set(first[:100]), 10)  # a part of the first burst went through, both are busy
            await a_ctx.__aexit__(None, None, None)  # SIGTERM's drain: leave_group, then the rest
            await burst
            # leave_group emptied the session within its own bound (a timeout keeps the session instead)
            assert a.bus._end_session, "leave_group did not empty the session"
            if isinstance(broker, Mosquitto):  # rumqttd ignores Session Expiry Interval: it keeps them all
                await _disconnected(broker, "telgate-a")  # the broker has read its DISCONNECT
                assert not session_present(broker.port, "telgate-a")
            await asyncio.to_thread(publish_all, broker.port, after)
            await results.wait(set(first + during + after), 15)
        with results.lock:
            repeated = {cid: r for cid, r in results.by_id.items() if len(r) != 1}
        assert not repeated, list(repeated.items())[:3]
        by_a = [cid for cid in first + during if results.by(cid) == "gw-a"]
        assert len(by_a) > 100, len(by_a)  # it did take its share until it left
        assert {results.by(cid) for cid in after} == {"gw-b"}
    finally:
        results.close()


async def test_a_plain_stop_keeps_the_session_and_its_share(broker: Mosquitto, tmp_path: Path) -> None:
    """The default (one instance, or a restart): the session keeps its place in the group, so Mosquitto
    goes on queueing that member's share for it; those commands are answered when it comes back."""
    results = Results(broker.port)
    ids = creates(0, 40)
    settings_a = member(broker, tmp_path, "a")
    try:
        async with gateway(member(broker, tmp_path, "b")) as b:
            async with gateway(settings_a):
                pass  # online, in the group, then stopped without leaving
            assert session_present(broker.port, "telgate-a")
            await asyncio.to_thread(publish_all, broker.port, ids)
            # everything the broker routed to b is answered (and the results are here): what is not
            # answered now waits in a's session, not on its way
            took = await bus_caught_up(b)
            async with asyncio.timeout(10):
                while results.answered_by("gw-b") < took:
                    await asyncio.sleep(0.02)
            answered = results.count(set(ids))
            assert 0 < answered < len(ids), answered  # the rest wait in the stopped member's session
            async with gateway(settings_a):
                await results.wait(set(ids), 10)
        assert {results.by(cid) for cid in ids} == {"gw-a", "gw-b"}
    finally:
        results.close()
