"""An in-process gateway on a real Mosquitto, with a backend client that sends commands and collects events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bus import shim as mqtt_shim
from gateway.config import Settings, load_settings
from gateway.domain.statuses import Channel
from gateway.service.app import App

from . import ledger
from .broker import free_port
from .scripted import ScriptedPort

# The store the gateways of the running test use: None is the embedded default (SQLite in data_dir); a
# test marked `both_stores` runs once more with a PostgreSQL database of its own (tests/conftest.py).
STORE_URL: str | None = None


def store_toml() -> str:
    """The `[store]` section for a gateway configured from a file (a separate process), or nothing."""
    return f'[store]\nurl = "{STORE_URL}"\n' if STORE_URL else ""


def settings_for(broker_url: str, data_dir: Path, **sections: dict[str, Any]) -> Settings:
    base: dict[str, Any] = {
        "gateway": {"id": "gw-test", "data_dir": str(data_dir), "drain_timeout_s": 5},
        "bus": {"url": broker_url, "client_id": f"telgate-test-{free_port()}"},
        "http": {"listen": "127.0.0.1:0"},
        "retry": {"max_attempts": 2, "delays_s": [0.2]},
        **({"store": {"url": STORE_URL}} if STORE_URL else {}),
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(None, **base)


class Backend:
    """A campaign backend on the bus: publishes commands, records every message the gateway sends."""

    def __init__(self, client: aiomqtt.Client, prefix: str = "telgate") -> None:
        self.client = client
        self.prefix = prefix
        self.events: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []
        self.campaigns: list[dict[str, Any]] = []
        self.responses: list[tuple[bytes | None, dict[str, Any]]] = []
        self.by_contact: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.presence: dict[str, str] = {}
        self.inbound: list[dict[str, Any]] = []  # InboundMessage, as published (repeats kept)
        self.notices: list[dict[str, Any]] = []  # WhatsAppNotice
        self._changed = asyncio.Event()

    async def send(
        self,
        kind: str,
        payload: dict[str, Any] | bytes,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> None:
        props = None
        if response_topic:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(f"{self.prefix}/v1/cmd/{kind}", body, qos=1, properties=props)

    async def listen(self) -> None:
        async for message in self.client.messages:
            self.take(message)

    def take(self, message: aiomqtt.Message) -> None:
        data = json.loads(message.payload)  # type: ignore[arg-type]
        topic = str(message.topic)
        if topic.startswith(f"{self.prefix}/v1/evt/contact/"):
            self.events.append(data)
            self.by_contact[(data["campaign_id"], data["contact_id"])].append(data)
        elif topic == f"{self.prefix}/v1/evt/command":
            self.results.append(data)
        elif topic.startswith(f"{self.prefix}/v1/evt/campaign/"):
            self.campaigns.append(data)
        elif topic.startswith(f"{self.prefix}/v1/evt/inbound/"):
            self.inbound.append(data)
        elif topic.startswith(f"{self.prefix}/v1/evt/notice/"):
            self.notices.append(data)
        elif topic.startswith(f"{self.prefix}/v1/gateways/"):
            self.presence[topic.split("/")[-2]] = data["state"]
        elif topic.startswith("backend/"):
            corr = getattr(message.properties, "CorrelationData", None)
            self.responses.append((corr, data))
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def loop() -> None:
            while not predicate():  # woken by every bus message, and every 50 ms for other sources
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            items = sorted(self.by_contact.items(), key=lambda kv: bool(kv[1]) and kv[1][-1]["final"])
            seen = {f"{k[0]}/{k[1]}": [e["status"] for e in v] for k, v in items[:12]}
            raise AssertionError(
                f"timed out after {timeout}s; contacts: {seen}; results: {self.results[-5:]}"
            ) from None

    def result(self, command_id: str | None) -> dict[str, Any] | None:
        for r in self.results:
            if r["command_id"] == command_id:
                return r
        return None

    def unique(self, campaign: str, contact: str) -> list[dict[str, Any]]:
        """The contact's events as a consumer keeps them: deduplicated on event_id, ordered by sequence."""
        seen: dict[str, dict[str, Any]] = {}
        for e in self.by_contact[(campaign, contact)]:
            seen.setdefault(e["event_id"], e)
        return sorted(seen.values(), key=lambda e: e["sequence"])

    def statuses(self, campaign: str, contact: str) -> list[str]:
        return [e["status"] for e in self.by_contact[(campaign, contact)]]

    def final(self, campaign: str, contact: str) -> bool:
        evs = self.by_contact[(campaign, contact)]
        return bool(evs) and evs[-1]["final"]


@contextlib.asynccontextmanager
async def backend(broker_url: str, prefix: str = "telgate") -> AsyncIterator[Backend]:
    """A backend with a persistent MQTT session that reconnects, as a real consumer would."""
    host, port = broker_url.removeprefix("mqtt://").split(":")
    identifier = f"backend-{free_port()}"
    connected = asyncio.Event()
    holder: list[Backend] = []

    async def loop() -> None:
        while True:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            try:
                async with aiomqtt.Client(
                    host,
                    int(port),
                    protocol=aiomqtt.ProtocolVersion.V5,
                    identifier=identifier,
                    # clean_start=False from the first connection: Mosquitto 2.0 keeps only such
                    # sessions across its own restart
                    clean_start=False,
                    properties=props,
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                ) as client:
                    await client.subscribe(f"{prefix}/v1/evt/#", qos=1)
                    await client.subscribe(f"{prefix}/v1/gateways/+/status", qos=1)
                    await client.subscribe("backend/#", qos=1)
                    if not holder:
                        holder.append(Backend(client, prefix))
                    holder[0].client = client
                    connected.set()
                    try:
                        await holder[0].listen()
                    finally:
                        # aiomqtt PUBACKs on receipt: what it queued before the disconnect is ours to process
                        queued = mqtt_shim.incoming(client)
                        while not queued.empty():
                            holder[0].take(queued.get_nowait())
            except aiomqtt.MqttError:
                connected.clear()
                await asyncio.sleep(0.2)

    task = asyncio.create_task(loop())
    try:
        await asyncio.wait_for(connected.wait(), 10)
        yield holder[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task


@contextlib.asynccontextmanager
async def gateway(
    settings: Settings, channels: tuple[Channel, ...] = (Channel.VOICE, Channel.WHATSAPP), **port_kw: Any
) -> AsyncIterator[App]:
    app = App(settings)
    for ch in channels:
        app.add_port(ScriptedPort(app.engine, ch, **port_kw))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await asyncio.wait_for(app.ready.wait(), 10)
    await asyncio.wait_for(app.bus.connected.wait(), 10)
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def scripted_ledger(b: Backend, app: App, channel: Channel, patience_s: float = 10.0) -> ledger.Comparison:
    """The wire ledger of a gateway() with scripted ports: the dials/sends the port carried out, per contact,
    against the attempts in the events `b` received (SPEC §9). Zero on both sides when the channel has no port."""
    started = scripted(app, channel).started if channel in app.ports else []
    return await ledger.check(b, channel.value, ledger.scripted_started(started), by="contact", patience_s=patience_s)


def scripted(app: App, channel: Channel) -> ScriptedPort:
    """The scripted port gateway() added for `channel`."""
    port = app.ports[channel]
    assert isinstance(port, ScriptedPort), f"the {channel} port is not scripted"
    return port
