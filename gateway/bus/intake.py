"""Commands in (SPEC §3): the receiver on the shared subscription, each message parsed, applied and
answered with one committed CommandResult, and acknowledged to the broker (manual PUBACK, in order) only
after that commit, so a crash before it gets the command redelivered; payloads parsed ahead of the store
bounded by PARSE_AHEAD_BYTES."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt

from gateway.bus import shim as mqtt_shim
from gateway.bus.state import BusState
from gateway.contract.wire import (
    COMMANDS,
    Command,
    CommandError,
    CommandResult,
    DialCommand,
    Rejection,
    SendCommand,
    check_response_topic,
    parse_command,
)
from gateway.domain.phones import normalise_all
from gateway.engine.commands import (
    INTERNAL_ERROR,
    command_hint,
    execute,
    fail_command,
    internal_error,
    publish_result,
)

log = logging.getLogger("telgate.bus")
COMMAND_KINDS = frozenset(COMMANDS)  # a metric label: anything else on cmd/+ is counted as "unknown"

# ~2 bulk commands of 1,000 plain contacts (51 KB each) per batch, or every single one in flight (one
# command is always taken, however big); 512 KiB (~9 bulks) gave bigger batches, 10-20 % fewer bulk
# contacts per second and 10 MiB more RSS (bench/ingest --only bulk, docs/decisions.md)
PARSE_AHEAD_BYTES = 128 * 1024


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


class Intake(BusState):
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
                except Exception as exc:  # nothing was committed: the broker redelivers it
                    # the engine logged a store failure where it happened; this says what became of the command
                    log.info("command left unacknowledged for redelivery", extra={"mid": mid, "detail": repr(exc)})
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
