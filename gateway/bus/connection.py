"""The bus's connection: making the aiomqtt client (its session, will and paho hooks), connecting and
reconnecting with backoff, subscribing to the commands, and the retained presence (the will sets
`offline` when the process dies). Each connection runs the outbox publisher and the intake's receiver."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import __version__
from gateway.bus import shim as mqtt_shim
from gateway.bus.intake import Intake
from gateway.bus.mqtt_io import install as batched_io
from gateway.bus.outbox import WINDOW, Outbox
from gateway.contract.wire import Presence

log = logging.getLogger("telgate.bus")


class Connection(Outbox, Intake):
    async def stop_accepting(self) -> None:
        """Take no more commands. The subscription stays with the persistent session, and a command that
        arrives now is left unacknowledged: the broker keeps both for the next start (a restart in the
        middle of an upload loses nothing and asks nothing of the backend). After `leave_group` nothing
        arrives any more."""
        self.accepting = False
        self.state = "draining"
        client = self._client
        if client is not None and self.connected.is_set():
            try:
                await self._presence(client, "draining")
            except aiomqtt.MqttError as exc:  # the connection is going: the next one announces the state
                log.info("could not announce draining", extra={"detail": str(exc)})

    def abort(self) -> None:
        """The app is going down without a drain (LeaseLost, a failed task): stop reconnecting. The task's
        cancellation is not enough on its own: aiomqtt 2.5 awaits connect, subscribe and publish through
        `asyncio.wait_for`, which on Python 3.11 can swallow a cancellation that arrives as it completes
        (sip/waiting.py has the same note), and the loop then went on reconnecting while the App waited
        for it forever. (Not `Task.cancelling()`: Python 3.11's TaskGroup leaves it raised after a child's
        error, so every disconnect would read as a cancellation.)"""
        self._closing = True

    async def close(self) -> None:
        """Publish the offline presence and disconnect cleanly (ending the session after `leave_group`)."""
        self._closing = True
        self._normaliser.shutdown(wait=False)  # what was handed to it still runs
        client = self._client
        if client is not None and self.connected.is_set():
            try:
                await self._presence(client, "offline")
            except aiomqtt.MqttError as exc:  # the will says `offline` for it once the broker drops the connection
                log.info("could not announce offline", extra={"detail": str(exc)})

    # -- connection loop -------------------------------------------------------------------------
    def _command_filter(self) -> str:
        topic = self.topics.commands
        if self.cfg.protocol == 4:
            return topic  # MQTT 3.1.1 has no shared subscriptions: one gateway per broker
        return f"$share/{self.cfg.shared_group}/{topic}" if self.cfg.shared_group else topic

    def _presence_payload(self, state: str) -> bytes:
        pbx, wa = self.channel_states()
        return (
            Presence(
                state=state,
                version=__version__,
                started_at=self.started_at,
                epoch=int(self.started_at.timestamp() * 1000),
                pbx=pbx,
                whatsapp=wa,
            )
            .model_dump_json()
            .encode()
        )

    def _make_client(self) -> aiomqtt.Client:
        tls_context = None
        if self.tls:
            tls_context = ssl.create_default_context(cafile=str(self.cfg.ca_file) if self.cfg.ca_file else None)
        session: dict[str, Any]
        if self.cfg.protocol == 5:
            connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_props.SessionExpiryInterval = 3600  # queued commands survive a short gateway outage
            # without it Mosquitto hands over max_inflight_messages (20) at a time: the batches stay small
            connect_props.ReceiveMaximum = self.cfg.receive_maximum
            session = {"protocol": aiomqtt.ProtocolVersion.V5, "clean_start": False, "properties": connect_props}
        else:  # MQTT 3.1.1: a persistent session, no properties
            session = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": False}
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.cfg.username,
            password=self.cfg.password.get_secret_value() if self.cfg.password else None,
            identifier=self.client_id,
            keepalive=self.cfg.keepalive_s,
            **session,
            tls_context=tls_context,
            # the outbox keeps its own window of WINDOW rows awaiting their PUBACK (`_publisher`). paho's limit
            # makes it walk every message it holds on each PUBACK, but with no limit (0) the cluster tests
            # failed in 3 of 4 runs beside another worker, against 0 of 5 with it (docs/decisions.md)
            max_inflight_messages=WINDOW,
            will=None
            if self._orphan
            else aiomqtt.Will(self.topics.presence(self.gateway_id), self._presence_payload("offline"), 1, True),
            timeout=10,
            # paho leaves Nagle on: a status event would wait for the previous segment's delayed ACK (~40 ms)
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        client.pending_calls_threshold = WINDOW * 4
        paho = mqtt_shim.paho_of(client)
        paho.manual_ack_set(True)  # PUBACK a command only after its result is committed
        if self.cfg.protocol == 5:
            aiomqtt_on_connect: Any = paho.on_connect  # aiomqtt's handler (set in its __init__)

            def on_connect(*args: Any) -> Any:
                """The broker's Receive Maximum from the CONNACK (aiomqtt drops its properties)."""
                props = args[4] if len(args) > 4 else None
                self.broker_receive_maximum = getattr(props, "ReceiveMaximum", None) if props is not None else None
                return aiomqtt_on_connect(*args)

            paho.on_connect = on_connect
        batched_io(client)  # one recv for many packets, one send per loop turn (gateway/bus/mqtt_io.py)
        if self.cfg.protocol == 5:
            plain_disconnect = paho.disconnect

            def disconnect(reasoncode: Any = None, properties: Properties | None = None) -> Any:
                """aiomqtt's clean DISCONNECT, ending the session once `leave_group` emptied it."""
                if properties is None and self._end_session:
                    properties = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
                    properties.SessionExpiryInterval = 0
                return plain_disconnect(reasoncode, properties)

            paho.disconnect = disconnect  # type: ignore[method-assign]
        return client

    async def run(self) -> None:
        """Connect, reconnect with backoff, until `close`; deletes of acknowledged rows outlive connections."""
        async with asyncio.TaskGroup() as tg:
            deleter = tg.create_task(self._deleter(), name="bus-outbox-deleter")
            try:
                await self._connection_loop()
            finally:
                deleter.cancel()

    async def _connection_loop(self) -> None:
        backoff = 0.2
        while not self._closing:
            try:
                client = self._make_client()
                async with client:
                    if self._closing:  # see `abort`
                        return
                    self._client = client
                    if self.accepting:
                        await client.subscribe(self._command_filter(), qos=1)
                    # connected before `online` is announced: a backend that reads the presence and asks
                    # /readyz at once must find the bus up (the broker forwards the presence before its
                    # PUBACK reaches this side)
                    self.connected.set()
                    self.recorder.bus_connected.set(1)
                    if not self._orphan:
                        await self._presence(client, self.state)  # `online` means commands are being taken
                    if self._closing:
                        return
                    backoff = 0.2
                    log.info("bus connected", extra={"broker": f"{self.host}:{self.port}"})
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._publisher(client), name="bus-publisher")
                        if self.accepting:
                            tg.create_task(self._receiver(client), name="bus-receiver")
            except* aiomqtt.MqttError as group:
                log.warning("bus disconnected", extra={"detail": str(group.exceptions[0])})
            except* (OSError, TimeoutError) as group:
                log.warning("bus connection failed", extra={"detail": repr(group.exceptions[0])})
            finally:
                self._client = None
                self.connected.clear()
                self.recorder.bus_connected.set(0)
            if self._closing or self._orphan:  # an orphan's session taken back by its owner: let it have it
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 15.0)

    async def _presence(self, client: aiomqtt.Client, state: str) -> None:
        await client.publish(
            self.topics.presence(self.gateway_id), self._presence_payload(state), qos=1, retain=True, timeout=10
        )
