"""The MQTT bus (SPEC §3): commands in over a shared subscription, the outbox out with QoS 1.

- A command is acknowledged to the broker (manual PUBACK, in order) only after its result is committed,
  so a crash before the commit gets it redelivered; its CommandResult is then published from the outbox.
- An outbox row is deleted only after the broker's PUBACK; a reconnect republishes from the oldest
  unacknowledged row in id order, so per-contact order holds and repeats carry the same event_id.
- Presence is retained; the will sets `offline` when the process dies.
- A stop keeps the persistent session and its place in the share group (commands published meanwhile wait
  for the restart), unless the instance leaves the group (`leave_on_stop`, `leave_group`): then it
  unsubscribes, takes and acknowledges what the broker had already routed to it, and ends the session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from paho.mqtt.client import error_string as mqtt_error_string
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from metrics.recorder import Recorder
from sip.waiting import wait_event

from . import __version__, mqtt_shim
from .commands import (
    INTERNAL_ERROR,
    CommandContext,
    command_hint,
    execute,
    fail_command,
    internal_error,
    publish_result,
)
from .config import BusSection
from .engine import Engine
from .mqtt_io import install as batched_io
from .phones import normalise_all
from .store import OutboxRow, Txn
from .topics import Topics
from .wire import (
    COMMANDS,
    Command,
    CommandError,
    CommandResult,
    DialCommand,
    Presence,
    Rejection,
    SendCommand,
    check_response_topic,
    parse_command,
)

log = logging.getLogger("telgate.bus")
COMMAND_KINDS = frozenset(COMMANDS)  # a metric label: anything else on cmd/+ is counted as "unknown"
WINDOW = 64


def outbox_window(receive_maximum: int | None) -> int:
    """Outbox rows awaiting their PUBACK at once: WINDOW, within the broker's Receive Maximum (MQTT 5
    §3.2.2.3.3; 65,535 when it says none) less one for the presence publish. Mosquitto 2.0 says 20 by
    default (100 with deploy/'s configuration) and does not enforce it; a broker that does disconnects a
    client over it."""
    return max(1, min(WINDOW, (receive_maximum or 65_535) - 1))


# ~2 bulk commands of 1,000 plain contacts (51 KB each) per batch, or every single one in flight (one
# command is always taken, however big); 512 KiB (~9 bulks) gave bigger batches, 10-20 % fewer bulk
# contacts per second and 10 MiB more RSS (bench/ingest --only bulk, docs/decisions.md)
PARSE_AHEAD_BYTES = 128 * 1024


def _fetch(txn: Txn, after: int, limit: int, parts: frozenset[int] | None, skip: list[int]) -> list[OutboxRow]:
    return txn.outbox_fetch(after, limit, parts, skip)


def _dead_letter(txn: Txn, moves: list[tuple[int, str]]) -> list[int]:
    return txn.outbox_dead_letter(moves)


# What a publish from the outbox may never be (the dead letters' reasons, metrics/recorder.py), decided
# before paho sees the row so that the decision does not rest on its exception texts. A topic: not empty,
# no wildcard, UTF-8 (a lone surrogate is a byte that was not), none of the code points MQTT says a
# string should not hold (controls, non-characters), which Mosquitto answers by closing the connection
# — the row would then end every connection, never answered; at most 65,535 bytes. A payload: at most
# the largest SPEC §3 allows on the bus (1 MiB: well under the shipped broker's max_packet_size, 2 MiB,
# past which Mosquitto closes the connection too). Correlation Data: MQTT binary data, 65,535 bytes.
MAX_PAYLOAD = 1024 * 1024
MAX_TOPIC = 65535
_NONCHARACTERS = "".join(chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF))
_NOT_IN_A_TOPIC = re.compile(f"[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef{_NONCHARACTERS}]")
# paho's return codes that are about the connection, not the row: it goes on the next connection
_CONNECTION_RCS = frozenset(
    {
        MQTTErrorCode.MQTT_ERR_AGAIN,
        MQTTErrorCode.MQTT_ERR_NOMEM,
        MQTTErrorCode.MQTT_ERR_NO_CONN,
        MQTTErrorCode.MQTT_ERR_CONN_REFUSED,
        MQTTErrorCode.MQTT_ERR_CONN_LOST,
        MQTTErrorCode.MQTT_ERR_TLS,
        MQTTErrorCode.MQTT_ERR_ERRNO,
        MQTTErrorCode.MQTT_ERR_QUEUE_SIZE,
        MQTTErrorCode.MQTT_ERR_KEEPALIVE,
    }
)


def _unpublishable(row: OutboxRow) -> tuple[str, str] | None:
    """(reason, detail) when no MQTT client may publish `row`; None when it may try."""
    try:
        topic = row.topic.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_topic", "the topic is not UTF-8"
    if not topic:
        return "invalid_topic", "the topic is empty"
    if b"#" in topic or b"+" in topic:
        return "invalid_topic", "a wildcard (# or +) in the topic"
    if _NOT_IN_A_TOPIC.search(row.topic):
        return "invalid_topic", "a control character, NUL or non-character in the topic"
    if len(topic) > MAX_TOPIC:
        return "invalid_topic", f"the topic is {len(topic)} bytes, more than {MAX_TOPIC}"
    if len(row.payload) > MAX_PAYLOAD:
        return "too_large", f"the payload is {len(row.payload)} bytes, more than {MAX_PAYLOAD}"
    if row.correlation is not None and len(row.correlation) > MAX_TOPIC:
        return "too_large", f"the correlation data is {len(row.correlation)} bytes, more than {MAX_TOPIC}"
    return None


def _publish_failure(rc: int) -> tuple[str, str] | None:
    """paho's return code of a publish: None when it is on its way, (reason, detail) when the row can
    never go; raises for a connection that is down or full (the row goes on the next connection)."""
    if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
        return None
    if rc in _CONNECTION_RCS:
        raise aiomqtt.MqttCodeError(rc, "could not publish from the outbox")
    detail = f"paho rc {rc}: {mqtt_error_string(rc)}"
    return ("too_large" if rc == MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE else "client_refused"), detail


async def _messages(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Message]:
    """`client.messages`, taking what is already queued without a wait: aiomqtt's iterator makes a task and
    an `asyncio.wait` for every message, a tenth of the event loop thread with single commands (py-spy).
    A disconnect still ends it: the queue empties, and the wait raises."""
    queue, waiting = mqtt_shim.incoming(client), client.messages
    while True:
        try:
            message = queue.get_nowait()
        except asyncio.QueueEmpty:
            message = await anext(waiting)
        yield message


@dataclass
class _Intake:
    """What one connection's receiver took off the bus: `arrived` counts messages handed to it, `unacked`
    those of QoS 1 not yet acknowledged (a command whose commit failed stays so: the broker keeps it)."""

    client: aiomqtt.Client
    arrived: int = 0
    unacked: int = 0

    def settled(self) -> bool:
        return self.unacked == 0 and mqtt_shim.incoming(self.client).empty()


class Bus:
    def __init__(
        self,
        cfg: BusSection,
        client_id: str,
        gateway_id: str,
        engine: Engine,
        recorder: Recorder,
        ctx: CommandContext,
        started_at: datetime,
        channel_states: Callable[[], tuple[str, str]],
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.gateway_id = gateway_id
        self.engine = engine
        self.recorder = recorder
        self.ctx = ctx
        self.topics: Topics = engine.topics
        self.started_at = started_at
        self.channel_states = channel_states
        url = urlsplit(cfg.url)
        self.host = url.hostname or "127.0.0.1"
        self.tls = url.scheme == "mqtts"
        self.port = url.port or (8883 if self.tls else 1883)
        self.connected = asyncio.Event()
        self.accepting = True
        self.received = 0  # commands taken off the bus (the allocator trim looks for the end of a burst)
        self.broker_receive_maximum: int | None = None  # from the CONNACK (MQTT 5): bounds the outbox window
        self.state = "online"
        self._client: aiomqtt.Client | None = None
        self._wake = asyncio.Event()
        self._normaliser = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="telgate-numbers")
        self._acked: list[int] = []
        self._acked_set: set[int] = set()
        self._row_part: dict[int, int] = {}  # rows published and not yet deleted -> their partition
        # deleted rows, forgotten by the publisher only before its next fetch: a fetch whose snapshot is
        # older than the delete still sees them pending, and must still know them for published
        self._deleted: list[int] = []
        self._closing = False
        # Several instances: on a final stop leave the share group (App._drain calls `leave_group`) rather
        # than keep a session the broker goes on routing a share of the commands to for an hour
        self.leave_on_stop = False
        self._intake: _Intake | None = None
        self._end_session = False  # set by a complete `leave_group`: the DISCONNECT ends the session
        # an orphan's session adopted (`adopt`): no presence, no will, one connection only
        self._orphan = False
        # the outbox partitions this instance publishes now (gateway/cluster.py); None: all of them
        self.parts: Callable[[], frozenset[int] | None] = lambda: None

    def busy_parts(self) -> set[int]:
        """Partitions with rows on the wire or acknowledged and not yet deleted: not to be given back."""
        return set(self._row_part.values())

    def in_flight(self) -> int:
        return len(self._row_part.keys() - set(self._deleted))

    # -- public ------------------------------------------------------------------------------
    def notify(self) -> None:
        """New rows in the outbox."""
        self._wake.set()

    async def stop_accepting(self) -> None:
        """Take no more commands. The subscription stays with the persistent session, and a command that
        arrives now is left unacknowledged: the broker keeps both for the next start (a restart in the
        middle of an upload loses nothing and asks nothing of the backend). After `leave_group` nothing
        arrives any more."""
        self.accepting = False
        self.state = "draining"
        client = self._client
        if client is not None and self.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError):
                await self._presence(client, "draining")

    async def pending(self) -> int:
        count, _ = await self.engine.store.read(lambda txn: txn.outbox_stats())
        return count

    async def leave_group(self, timeout_s: float = 10.0) -> None:
        """Leave the command share group for good, losing nothing (a final stop while other instances take
        the commands). Mosquitto 2.0 round-robins a shared subscription over its members' sessions, online
        or not, and never hands one member's messages to another: what it routed here is delivered here or
        dropped with the session. So, in this order:

        1. UNSUBSCRIBE: from the UNSUBACK on, new commands go to the other members;
        2. take, commit and acknowledge what the session still holds (in flight, then its queue, which the
           broker releases as the PUBACKs free Receive Maximum), until a round trip after the last PUBACK
           brings nothing (Mosquitto writes what a PUBACK releases before its answer to the next packet).
           The round trip is a SUBSCRIBE and UNSUBSCRIBE of a topic of its own that no command is sent to:
           every broker answers those (rumqttd does not answer the UNSUBSCRIBE of a filter not held);
        3. only then end the session: the DISCONNECT at `close` carries Session Expiry Interval 0.

        Bounded by `timeout_s`: if the queue is not empty by then (a long backlog, a failing store, no
        connection) the session is kept, as on a restart, and what it holds waits for the next start."""
        if not self.accepting:  # its receiver is gone: nothing could take what the session holds
            log.warning("leave_group after stop_accepting: the session is kept for the next start")
            return
        filt = self._command_filter()
        # under the commands' topic, which the gateway may read (deploy/mosquitto/acl); two levels deep,
        # so `cmd/+` never matches it and no command is ever published to it
        fence = self.topics.commands.removesuffix("+") + "fence/" + re.sub(r"[+#/]", "_", self.client_id)
        empty_rounds = 0
        left: aiomqtt.Client | None = None  # the connection the UNSUBSCRIBE was answered on
        try:
            async with asyncio.timeout(timeout_s):
                while empty_rounds < 2:  # twice, a moment apart: a broker may release its queue lazily
                    await self.connected.wait()
                    intake, client = self._intake, self._client
                    if intake is None or client is None or intake.client is not client:
                        await asyncio.sleep(0.01)  # the receiver of a new connection is starting
                        continue
                    try:
                        # leave at once, however busy (every command routed here meanwhile is one more
                        # to take before going), and again after a reconnect, which subscribed anew
                        if left is not client:
                            await client.unsubscribe(filt, timeout=10)
                            left = client
                            continue
                        while not intake.settled():  # noqa: ASYNC110 (the acker's PUBACKs, polled)
                            await asyncio.sleep(0.005)
                        seen = intake.arrived
                        await client.subscribe(fence, qos=1, timeout=10)  # answered even when refused
                        await client.unsubscribe(fence, timeout=10)
                    except aiomqtt.MqttError:
                        empty_rounds = 0  # the connection dropped: its redeliveries go to the next one
                        continue
                    if intake.arrived == seen and intake.settled():
                        empty_rounds += 1
                        if empty_rounds < 2:
                            await asyncio.sleep(0.1)
                    else:
                        empty_rounds = 0
        except TimeoutError:
            intake = self._intake
            log.warning(
                "could not empty the session before leaving the share group: it is kept for the next start",
                extra={"unacked": intake.unacked if intake else None, "timeout_s": timeout_s},
            )
            return
        self._end_session = True
        log.info("left the command share group", extra={"group": self.cfg.shared_group})

    async def adopt(self, client_id: str, timeout_s: float) -> bool:
        """Empty the MQTT session a dead member left in the share group, then end it (SPEC §11: its
        commands are taken over too). Mosquitto goes on routing the dead member's share of the commands
        to its offline session and hands them to nobody else; connecting under its client id resumes
        that session here: what it holds is taken, committed and acknowledged like any command, and
        `leave_group` ends it. If the member comes back meanwhile, the broker gives the session back to
        it and this stops. True when the session was emptied and ended."""
        orphan = Bus(
            self.cfg,
            client_id,
            self.gateway_id,
            self.engine,
            self.recorder,
            self.ctx,
            self.started_at,
            self.channel_states,
        )
        orphan._orphan = True
        orphan.parts = frozenset  # publishes nothing: the outbox belongs to the partitions' holders
        task = asyncio.create_task(orphan.run(), name=f"bus-adopt-{client_id}")
        try:
            async with asyncio.timeout(timeout_s):
                await orphan.connected.wait()
            await orphan.leave_group(timeout_s)
            ended = orphan._end_session
            await orphan.close()
        except TimeoutError:
            ended = False
        finally:  # cancelled, the connection's `async with` sends the DISCONNECT (ending the session)
            orphan._closing = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        log.info("adopted a dead member's bus session", extra={"client_id": client_id, "ended": ended})
        return ended

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
            with contextlib.suppress(aiomqtt.MqttError):
                await self._presence(client, "offline")

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
        batched_io(client)  # one recv for many packets, one send per loop turn (gateway/mqtt_io.py)
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

    # -- commands in -----------------------------------------------------------------------------
    async def _receiver(self, client: aiomqtt.Client) -> None:
        acks: asyncio.Queue[tuple[asyncio.Future[Any], int, int]] = asyncio.Queue()
        paho = mqtt_shim.paho_of(client)
        intake = self._intake = _Intake(client)

        async def acker() -> None:
            while True:
                fut, mid, qos = await acks.get()
                try:
                    await fut
                except Exception:  # nothing was committed (the store failed): the broker redelivers it
                    continue
                if qos > 0:
                    paho.ack(mid, qos)
                    intake.unacked -= 1

        # Commands taken but not yet committed are parsed objects (a bulk of 1,000 contacts is ~1 MB of
        # models): at most PARSE_AHEAD_BYTES of payload are parsed ahead of the store; the rest wait as raw
        # bytes in the client's queue. Without the bound a burst of bulks held Receive Maximum (256) of them
        # at once, and the process kept that peak for good (bench/ingest, RSS with queued contacts).
        parsed = 0
        room = asyncio.Event()
        room.set()

        def releaser(size: int) -> Callable[[asyncio.Future[Any]], None]:
            def release(_done: asyncio.Future[Any]) -> None:
                nonlocal parsed
                parsed -= size
                room.set()

            return release

        async with asyncio.TaskGroup() as tg:
            tg.create_task(acker(), name="bus-acker")
            async for message in _messages(client):
                intake.arrived += 1
                if message.qos > 0:
                    intake.unacked += 1
                size = len(message.payload) if isinstance(message.payload, bytes | bytearray) else 0
                while parsed > 0 and parsed + size > PARSE_AHEAD_BYTES:
                    room.clear()
                    await room.wait()
                fut = self._handle(message)
                if fut is None:  # draining: never acknowledge what was not applied, the broker keeps it
                    continue
                parsed += size
                fut.add_done_callback(releaser(size))
                acks.put_nowait((fut, message.mid, message.qos))

    def _handle(self, message: aiomqtt.Message) -> asyncio.Future[Any] | None:
        """One message on `cmd/+` → the future of its committed answer (None while draining). Total
        (DESIGN habit 15): whatever the message holds, exactly one CommandResult is committed for it — a
        refusal naming the field, the command's own result, or `internal_error` when the gateway fails."""
        self.received += 1
        if not self.accepting:
            return None
        kind = str(message.topic).rsplit("/", 1)[-1]
        label = kind if kind in COMMAND_KINDS else "unknown"
        props = message.properties
        response_topic: str | None = getattr(props, "ResponseTopic", None) if props else None
        correlation: bytes | None = getattr(props, "CorrelationData", None) if props else None
        topic_problem = check_response_topic(response_topic, self.topics.prefix)
        if topic_problem is not None:
            response_topic = correlation = None  # never published to: the refusal goes on evt/command only
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        try:
            cmd = parse_command(kind, bytes(payload))
            if topic_problem is not None:
                raise Rejection("invalid_field", "response_topic", topic_problem, cmd.command_id)
        except Rejection as rej:
            self.recorder.command(label, "rejected")
            result = self._refusal(rej.command_id, kind, rej.error)
            log.info("command rejected", extra={"kind": label, "code": rej.error.code, "field": rej.error.field})
            return self.engine.submit(lambda unit: publish_result(unit, result, response_topic, correlation))
        except Exception as exc:  # a bug in the parsing: contained, answered, counted
            log.error("command failed inside the gateway", exc_info=exc, extra={"kind": label})
            self.recorder.command(label, "error")
            self.recorder.command_failed(label, INTERNAL_ERROR)
            failed = internal_error(None, kind[:64], self.gateway_id, self.engine.clock())
            return self.engine.submit(lambda unit: publish_result(unit, failed, response_topic, correlation))

        numbers = self._numbers_of(cmd)

        def work(unit: Any) -> CommandResult:
            given = None if numbers is None else numbers.result()  # ready by now, as a rule
            return execute(unit, cmd, self.ctx, self.gateway_id, response_topic, correlation, given)

        fallback = functools.partial(
            fail_command, cmd=cmd, gateway_id=self.gateway_id, response_topic=response_topic, correlation=correlation
        )
        fut = self.engine.submit(work, command_hint(cmd), fallback)
        fut.add_done_callback(lambda f: self._count(cmd.kind, f))
        return fut

    def _refusal(self, command_id: str | None, kind: str, error: CommandError) -> CommandResult:
        return CommandResult(
            command_id=command_id,
            kind=kind[:64],
            accepted=False,
            error=error,
            gateway_id=self.gateway_id,
            occurred_at=self.engine.clock(),
        )

    def _numbers_of(self, cmd: Command) -> concurrent.futures.Future[dict[str, str | None]] | None:
        """A bulk command's numbers, normalised on a thread of their own from the moment it is parsed:
        the store thread applies bulks one after the other, and a third of its time went to phonenumbers
        while the other threads waited on its commits (py-spy `--gil`, bench/ingest bulk). The work item
        takes the result, waiting for it if need be, so nothing is applied out of order. None (the store
        thread normalises them) for a single contact or once the bus is closed."""
        if not isinstance(cmd, DialCommand | SendCommand) or cmd.contacts is None:
            return None
        try:
            return self._normaliser.submit(normalise_all, [e.phone for e in cmd.contacts], self.ctx.default_region)
        except RuntimeError:  # shut down
            return None

    def _count(self, kind: str, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.recorder.command(kind, "error")
            return
        result: CommandResult = fut.result()
        if result.error is not None and result.error.code == INTERNAL_ERROR and not result.duplicate:
            self.recorder.command(kind, "error")
            self.recorder.command_failed(kind, INTERNAL_ERROR)
            return
        self.recorder.command(kind, "duplicate" if result.duplicate else "accepted" if result.accepted else "rejected")

    # -- events out ------------------------------------------------------------------------------
    async def _publisher(self, client: aiomqtt.Client) -> None:
        """Publish the outbox in id order with at most WINDOW rows awaiting their PUBACK.

        Of the partitions this instance holds only (`parts`). On a store several instances write
        (`Store.shared`), ids need not commit in id order, so there is no cursor: every fetch starts at
        the oldest pending row and skips the rows already on the wire (docs/cluster.md says why a
        contact's events still go out in `sequence` order).

        aiomqtt's `publish()` costs an Event, a timeout and a task per message, more than the rest of the
        pipeline; the outbox instead calls paho's publish on aiomqtt's connection and keeps its own
        registry of paho message ids (DESIGN habit 8), released by the PUBACK callback.

        A row that can never go (DESIGN habit 15) moves to the dead letters with its reason, and the rows
        behind it go on: one the client refuses (`_unpublishable`, paho's ValueError, a return code that
        is about the row, `_publish_failure`) and one whose PUBACK carries a failure reason (>= 0x80: the
        broker will refuse it again). Neither stops the publisher, so no restart and no member that takes
        the partition over meets it again. A return code about the connection (no connection, paho's
        queue full) ends the connection as before; the row goes on the next one.
        """
        paho = mqtt_shim.paho_of(client)
        window = asyncio.Semaphore(outbox_window(self.broker_receive_maximum))
        inflight: dict[int, OutboxRow] = {}  # paho mid -> outbox row
        # rows that can never go, to move to the dead letters before the next fetch: (row, reason, detail);
        # they stay in `_row_part` (not fetched again, their partition kept) until the move commits
        dead: list[tuple[OutboxRow, str, str]] = []
        original: Any = paho.on_publish

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
            if original is not None:
                original(c, userdata, mid, reason, properties)
            row = inflight.pop(mid, None)
            if row is None:
                return
            window.release()
            if getattr(reason, "is_failure", False):
                # MQTT 5 PUBACK >= 0x80: the broker refused it (ACL, quota, topic) and will refuse it again
                self.recorder.publish_refused.inc()
                dead.append((row, "broker_refused", f"PUBACK {getattr(reason, 'value', 0):#04x} {reason}"))
                self._wake.set()
                return
            self.recorder.events_published.inc()
            self._acked.append(row.id)
            self._acked_set.add(row.id)

        paho.on_publish = on_publish
        cursor = 0
        store = self.engine.store
        shared = store.shared
        disconnected = mqtt_shim.disconnected(client)
        busy = self._row_part
        try:
            while not disconnected.done():
                self._wake.clear()
                if dead:
                    await self._bury(dead)
                self._forget_deleted()
                parts = self.parts()
                if parts is not None and not parts:  # fenced, or holding no partition
                    await wait_event(self._wake, 0.5)
                    continue
                skip = [*busy.keys(), *self._acked_set.difference(busy)] if shared else []
                fetch = functools.partial(
                    _fetch, after=0 if shared else cursor, limit=WINDOW * 4, parts=parts, skip=skip
                )
                rows = [r for r in await store.read(fetch) if r.id not in busy and r.id not in self._acked_set]
                if not rows:
                    await wait_event(self._wake, 1.0)
                    continue
                for row in rows:
                    await window.acquire()
                    now_parts = self.parts()
                    if now_parts is not None and row.part not in now_parts:  # given up or fenced meanwhile
                        window.release()
                        break
                    cursor = row.id
                    refusal = _unpublishable(row)
                    if refusal is None:
                        props = None
                        if row.correlation is not None and self.cfg.protocol == 5:
                            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                            props.CorrelationData = row.correlation
                        try:
                            info = paho.publish(row.topic, row.payload, qos=1, retain=row.retain, properties=props)
                        except (ValueError, TypeError) as exc:  # about the row, whatever paho's words
                            refusal = "client_refused", f"{type(exc).__name__}: {exc}"
                        else:
                            refusal = _publish_failure(info.rc)
                            if refusal is None:
                                inflight[info.mid] = row
                    if refusal is not None:
                        window.release()
                        dead.append((row, *refusal))
                    busy[row.id] = row.part
            raise aiomqtt.MqttError("disconnected")
        finally:
            paho.on_publish = original
            # not acknowledged, or refused and not moved yet: published again on the next connection
            for row in [*inflight.values(), *(d[0] for d in dead)]:
                busy.pop(row.id, None)

    async def _bury(self, dead: list[tuple[OutboxRow, str, str]]) -> None:
        """Move the rows that can never go to the dead letters (one transaction), count and log each once.
        A row another member moved first (it held the partition meanwhile) is its to count."""
        taken = len(dead)  # a PUBACK may add to `dead` during the move: those wait for the next one
        rows = {row.id: (row, reason, detail) for row, reason, detail in dead[:taken]}
        moves = [(row_id, f"{reason}: {detail}") for row_id, (_, reason, detail) in rows.items()]
        moved = await self.engine.store.run(functools.partial(_dead_letter, moves=moves))
        del dead[:taken]
        for row_id in moved:
            row, reason, detail = rows[row_id]
            self.recorder.dead_letters.labels(reason).inc()
            log.error(
                "outbox row moved to the dead letters",
                extra={"row": row_id, "reason": reason, "detail": detail[:300], "topic": ascii(row.topic)[:300]},
            )
        self._deleted += list(rows)  # out of the outbox either way: forgotten before the next fetch

    def _forget_deleted(self) -> None:
        """Before a fetch: the rows whose delete committed are no longer pending for any later snapshot."""
        ids, self._deleted = self._deleted, []
        self._acked_set.difference_update(ids)
        for row_id in ids:
            self._row_part.pop(row_id, None)

    async def _deleter(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            if not self._acked:
                continue
            await self.flush_deletes()

    async def flush_deletes(self) -> None:
        """Delete the rows the broker acknowledged. Rows stay in `_acked_set` (never republished on this
        run) until their delete is committed; a failed or cancelled delete puts them back in the queue."""
        ids, self._acked = self._acked, []
        if not ids:
            return
        done = False
        try:
            await self.engine.store.published(ids)
            done = True
        finally:
            if done:
                self._deleted += ids
            else:
                self._acked[:0] = ids
