"""The outbox publisher (SPEC §3): events out with QoS 1 in id order within a window of rows awaiting their
PUBACK; the rows that can never go moved to the dead letters; the deleter, which removes a row only after
the broker's PUBACK. A reconnect republishes from the oldest unacknowledged row, so per-contact order holds
and repeats carry the same event_id."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from typing import Any

import aiomqtt
from paho.mqtt.client import error_string as mqtt_error_string
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.bus import shim as mqtt_shim
from gateway.bus.state import BusState
from gateway.store import OutboxRow, Txn
from sip.waiting import wait_event

log = logging.getLogger("telgate.bus")
WINDOW = 64


def outbox_window(receive_maximum: int | None) -> int:
    """Outbox rows awaiting their PUBACK at once: WINDOW, within the broker's Receive Maximum (MQTT 5
    §3.2.2.3.3; 65,535 when it says none) less one for the presence publish. Mosquitto 2.0 says 20 by
    default (100 with deploy/'s configuration) and does not enforce it; a broker that does disconnects a
    client over it."""
    return max(1, min(WINDOW, (receive_maximum or 65_535) - 1))


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


class Outbox(BusState):
    def busy_parts(self) -> set[int]:
        """Partitions with rows on the wire or acknowledged and not yet deleted: not to be given back."""
        return set(self._row_part.values())

    def in_flight(self) -> int:
        return len(self._row_part.keys() - set(self._deleted))

    def notify(self) -> None:
        """New rows in the outbox."""
        self._wake.set()

    async def pending(self) -> int:
        count, _ = await self.engine.store.read(lambda txn: txn.outbox_stats())
        return count

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
