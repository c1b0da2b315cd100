"""What the Bus keeps across its parts and connections: configuration, the broker's address, the state it
announces, and the bookkeeping the connection, the intake and the outbox share (one constructor)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiomqtt

from gateway.config import BusSection
from gateway.contract.topics import Topics
from gateway.engine.commands import CommandContext
from gateway.engine.engine import Engine
from metrics.recorder import Recorder

if TYPE_CHECKING:
    from gateway.bus.intake import _Intake


class BusState:
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
        # the outbox partitions this instance publishes now (gateway/cluster/membership.py); None: all of them
        self.parts: Callable[[], frozenset[int] | None] = lambda: None
