"""The backend's side of SPEC §3's flow control: a command window on the bus.

This module is the reference implementation of the contract a campaign backend follows when it sends
commands to telgate (`telgate import` and `telgate demo` send theirs through it):

1. **Every command gets exactly one CommandResult**, matched by `command_id`. On MQTT 5 the command
   carries a Response Topic (`{prefix}/v1/replies/{client_id}`) and Correlation Data (the command_id)
   and the result comes back there; on MQTT 3.1.1 (no properties) the backend reads
   `{prefix}/v1/evt/command` and keeps the results whose `command_id` it is waiting for.
2. **At most N commands without a result** (the window; default 8 bulk commands). The next command is
   published when a result frees a place. The broker's queue is finite (Mosquitto drops QoS 1 messages
   beyond `max_queued_messages` without telling anyone), and a window keeps a backend far below it
   however fast it produces.
3. **No result within T seconds (default 30): publish the command again with the same `command_id`.**
   Commands are idempotent by id: the gateway applies the first copy that reaches it and answers every
   copy, repeats with `"duplicate": true` and the stored counts. After a reconnect every command still
   without a result is published again at once (results sent while the backend was away are lost to a
   clean session). A command without a result `give_up_after_s` after its first publish fails with
   `NoResult`; it may or may not have been applied, and publishing it again later is always safe.
4. **Contact lists go as bulk `dial`/`send`** (SPEC §4: up to 1,000 contacts and 1 MiB per command):
   a window of 8 bulks keeps 8,000 contacts in flight with 8 messages in the broker's queue.

A publish the broker refuses (an ACL without `write` on `{prefix}/v1/cmd/#`) looks like a lost one:
it is retried until `give_up_after_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from gateway.config import BusSection
from gateway.contract.topics import Topics
from gateway.contract.wire import CommandResult

log = logging.getLogger("telgate.submit")

WINDOW = 8
RETRY_AFTER_S = 30.0
GIVE_UP_AFTER_S = 600.0


def encode(command: Mapping[str, Any]) -> bytes:
    """A command as it goes on the wire: compact UTF-8 JSON (what the 64 KiB / 1 MiB limits count)."""
    return json.dumps(command, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class BusTarget:
    """Where a backend connects: the broker, the topic prefix, its own MQTT identity."""

    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = "telgate"
    protocol: Literal[4, 5] = 5
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    client_id: str = field(default_factory=lambda: f"telgate-client-{os.getpid()}-{random.randrange(16**8):08x}")

    @classmethod
    def from_bus(cls, bus: BusSection, client_id: str | None = None) -> BusTarget:
        """The broker of a gateway configuration, under a client id of the backend's own (never the
        gateway's: a second connection with its id would throw the gateway off the broker)."""
        return cls(
            url=bus.url,
            prefix=bus.topic_prefix,
            protocol=bus.protocol,
            username=bus.username,
            password=bus.password.get_secret_value() if bus.password else None,
            ca_file=bus.ca_file,
            **({"client_id": client_id} if client_id else {}),
        )

    @property
    def where(self) -> str:
        """The broker's address without credentials, for messages."""
        url = urlsplit(self.url)
        return f"{url.scheme}://{url.hostname}:{url.port or (8883 if url.scheme == 'mqtts' else 1883)}"

    @property
    def replies(self) -> str | None:
        """The Response Topic of this client's commands (MQTT 5), or None (3.1.1: the shared topic)."""
        return Topics(self.prefix).replies(self.client_id) if self.protocol == 5 else None

    def client(self, **kw: Any) -> aiomqtt.Client:
        url = urlsplit(self.url)
        tls = url.scheme == "mqtts"
        tls_context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None) if tls else None
        return aiomqtt.Client(
            url.hostname or "127.0.0.1",
            url.port or (8883 if tls else 1883),
            username=self.username or (unquote(url.username) if url.username else None),
            password=self.password or (unquote(url.password) if url.password else None),
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self.protocol == 5 else aiomqtt.ProtocolVersion.V311,
            tls_context=tls_context,
            timeout=30,
            **kw,
        )


class NoResult(Exception):
    """A command got no result: published `publishes` times over `waited_s` seconds."""

    def __init__(self, kind: str, command_id: str, publishes: int, waited_s: float, detail: str = "") -> None:
        what = f"published {publishes} time(s)" if publishes else "never published (no connection to the broker)"
        super().__init__(f"{kind} {command_id}: no result after {waited_s:.0f} s, {what}{detail}")
        self.kind = kind
        self.command_id = command_id
        self.publishes = publishes
        self.waited_s = waited_s


@dataclass
class _Pending:
    kind: str
    command_id: str
    payload: bytes
    future: asyncio.Future[CommandResult]
    first: float
    last: float
    publishes: int = 0


class CommandWindow:
    """Publishes commands with at most `size` without a result, re-publishes after `retry_after_s`,
    resolves each with its CommandResult (or `NoResult` after `give_up_after_s`; None = never).

        async with CommandWindow(BusTarget(url, client_id="crm-1")) as window:
            result = await window.call("campaign", {"command_id": "k-1", "campaign_id": "c", "action": "create"})
            futures = [await window.submit("dial", bulk) for bulk in bulks]  # waits for room, not results
            results = await asyncio.gather(*futures)
    """

    def __init__(
        self,
        target: BusTarget,
        *,
        size: int = WINDOW,
        retry_after_s: float = RETRY_AFTER_S,
        give_up_after_s: float | None = GIVE_UP_AFTER_S,
    ) -> None:
        if size < 1 or retry_after_s <= 0 or (give_up_after_s is not None and give_up_after_s <= 0):
            raise ValueError("the window needs size >= 1 and positive timeouts")
        self.target = target
        self.size = size
        self.retry_after_s = retry_after_s
        self.give_up_after_s = give_up_after_s
        self.republished = 0  # publishes beyond the first, over the window's life
        self._pending: dict[str, _Pending] = {}
        self._room = asyncio.Semaphore(size)
        self._client: aiomqtt.Client | None = None
        self._first_connect: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []  # children of `_group`, cancelled and awaited at the exit
        self._group: contextlib.AsyncExitStack | None = None
        self._last_error = ""

    @property
    def outstanding(self) -> int:
        """Commands published (or waiting for the connection) without a result."""
        return len(self._pending)

    @property
    def connected(self) -> bool:
        """Connected to the broker now (False from the moment a connection is lost until the next one)."""
        return self._client is not None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        """Connect; raises `aiomqtt.MqttError` when the first connection fails (later ones are retried)."""
        self._group = contextlib.AsyncExitStack()
        group = await self._group.enter_async_context(asyncio.TaskGroup())
        self._tasks = [
            group.create_task(self._background(self._connection()), name="window-connection"),
            group.create_task(self._background(self._timers()), name="window-timers"),
        ]
        try:
            await self._first_connect
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._group is not None:
            await self._group.aclose()  # the task group's exit: every child has ended
            self._group = None
        for p in list(self._pending.values()):
            p.future.cancel()

    async def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """A background task of the window. One that fails is a failed first connection (raised by
        `__aenter__`) or a bug, logged: either way nobody waits forever, every command still waiting
        fails with it. It never raises into the task group, which would cancel the caller's task."""
        try:
            await work
        except Exception as exc:
            if not self._first_connect.done():
                self._first_connect.set_exception(exc)
            else:
                log.error("the command window failed", exc_info=exc, extra={"pending": len(self._pending)})
            for p in list(self._pending.values()):
                if not p.future.done():
                    p.future.set_exception(exc)

    # -- submitting ----------------------------------------------------------------------------------
    async def submit(self, kind: str, command: Mapping[str, Any]) -> asyncio.Future[CommandResult]:
        """Wait for room in the window, publish `command` to `{prefix}/v1/cmd/{kind}` and return the
        future of its result. `command["command_id"]` is the idempotency key: choose it so that the same
        intent always has the same id (a retry after a crash must not create anything twice)."""
        command_id = command.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            raise ValueError("a command needs a command_id")
        if command_id in self._pending:
            raise ValueError(f"command {command_id} is already waiting for its result")
        payload = encode(command)
        await self._room.acquire()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        p = _Pending(kind, command_id, payload, loop.create_future(), now, now)
        self._pending[command_id] = p
        p.future.add_done_callback(lambda _f: self._settled(p))
        await self._publish(p)
        return p.future

    async def room(self) -> None:
        """Wait until a command can be published without waiting (a producer that wants to look at the
        results so far before it commits to the next command)."""
        async with self._room:
            pass

    async def call(self, kind: str, command: Mapping[str, Any]) -> CommandResult:
        """Submit one command and wait for its result."""
        return await (await self.submit(kind, command))

    def _settled(self, p: _Pending) -> None:
        if self._pending.get(p.command_id) is p:
            del self._pending[p.command_id]
            self._room.release()

    async def _publish(self, p: _Pending) -> None:
        """One copy of `p` to the broker (QoS 1, PUBACK awaited). Without a connection nothing happens:
        the next connection publishes every command still waiting."""
        client = self._client
        if client is None or p.future.done():
            return
        props = None
        if self.target.replies is not None:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = self.target.replies
            props.CorrelationData = p.command_id.encode()
        p.last = time.monotonic()
        try:
            await client.publish(Topics(self.target.prefix).command(p.kind), p.payload, qos=1, properties=props)
        except aiomqtt.MqttError as exc:
            self._last_error = str(exc)
            return
        p.publishes += 1
        if p.publishes > 1:
            self.republished += 1

    # -- results -------------------------------------------------------------------------------------
    def _take(self, message: aiomqtt.Message) -> None:
        correlation = getattr(message.properties, "CorrelationData", None) if message.properties else None
        payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        try:
            data = json.loads(payload)
            known = {k: v for k, v in data.items() if k in CommandResult.model_fields or k == "schema"}
            result = CommandResult.model_validate(known)
        except (ValueError, AttributeError, ValidationError) as exc:
            log.warning("unreadable command result", extra={"detail": str(exc)[:200]})
            return
        command_id = bytes(correlation).decode(errors="replace") if correlation else result.command_id
        p = self._pending.get(command_id or "")
        if p is not None and not p.future.done():
            p.future.set_result(result)

    # -- background ----------------------------------------------------------------------------------
    async def _connection(self) -> None:
        backoff = 0.2
        topic = self.target.replies or Topics(self.target.prefix).command_result
        while True:
            try:
                client = self.target.client()
                client.pending_calls_threshold = 2 * self.size + 10
                async with client:
                    await client.subscribe(topic, qos=1)
                    self._client = client
                    backoff = 0.2
                    if not self._first_connect.done():
                        self._first_connect.set_result(None)
                    else:
                        log.info("reconnected: publishing %d commands again", len(self._pending))
                    for p in list(self._pending.values()):  # their results went to the lost connection
                        await self._publish(p)
                    async for message in client.messages:
                        self._take(message)
            except aiomqtt.MqttError as exc:
                if not self._first_connect.done():
                    raise
                self._last_error = str(exc)
                log.warning("bus connection lost", extra={"detail": str(exc)})
            finally:
                self._client = None
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 10.0)

    async def _timers(self) -> None:
        """Re-publish what waited `retry_after_s` for its result; fail what waited `give_up_after_s`."""
        give_up = self.give_up_after_s
        while True:
            now = time.monotonic()
            wake = now + min(self.retry_after_s, give_up or self.retry_after_s)
            for p in list(self._pending.values()):
                if p.future.done():
                    continue
                if give_up is not None and now - p.first >= give_up:
                    detail = f"; last bus error: {self._last_error}" if self._last_error and not p.publishes else ""
                    p.future.set_exception(NoResult(p.kind, p.command_id, p.publishes, now - p.first, detail))
                    continue
                if now - p.last >= self.retry_after_s:
                    await self._publish(p)
                    p.last = max(p.last, now)  # also when there is no connection: try again a period later
                wake = min(wake, p.last + self.retry_after_s)
                if give_up is not None:
                    wake = min(wake, p.first + give_up)
            await asyncio.sleep(max(0.005, wake - time.monotonic()))
