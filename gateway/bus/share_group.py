"""The command share group (SPEC §11): leaving it for good without losing what the broker routed here
(`leave_group`), and adopting a dead member's session to empty and end it (`adopt`)."""

from __future__ import annotations

import asyncio
import logging
import re

import aiomqtt

from gateway.bus.connection import Connection

log = logging.getLogger("telgate.bus")


class ShareGroup(Connection):
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
        orphan = type(self)(
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
        outcome: bool | aiomqtt.MqttError | OSError = False
        failed = False
        try:
            async with asyncio.TaskGroup() as tg:
                connection = tg.create_task(orphan.run(), name=f"bus-adopt-{client_id}")
                try:
                    async with asyncio.timeout(timeout_s):
                        await orphan.connected.wait()
                    await orphan.leave_group(timeout_s)
                    outcome = orphan._end_session
                    await orphan.close()
                except TimeoutError:
                    outcome = False
                except (aiomqtt.MqttError, OSError) as exc:  # the caller's to handle, once the connection is down
                    outcome = exc
                finally:  # cancelled, the connection's `async with` sends the DISCONNECT (ending the session)
                    orphan._closing = True
                    connection.cancel()
        except* Exception as group:  # the orphan's connection failed (a bug, its outbox deleter's store)
            log.error(
                "adopting a dead member's bus session failed: it is kept for the next start",
                exc_info=group,
                extra={"client_id": client_id},
            )
            failed = True
        if failed:
            return False
        if not isinstance(outcome, bool):
            raise outcome
        log.info("adopted a dead member's bus session", extra={"client_id": client_id, "ended": outcome})
        return outcome
