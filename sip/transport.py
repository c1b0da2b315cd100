"""The asyncio shell for UDP: a datagram becomes a UA call, the UA's outputs are sent, one timer re-armed.

Datagrams from addresses outside `allowed` are dropped and counted; over 64 KiB is refused by the codec.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import cast

from .ua import Addr, CallUpdate, Datagram, Output, PingAnswered, UserAgent
from .waiting import wait_event

log = logging.getLogger("telgate.sip")
Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


class UdpEndpoint(asyncio.DatagramProtocol):
    def __init__(
        self, ua: UserAgent, on_update: Callable[[CallUpdate | PingAnswered], None], allowed: Networks
    ) -> None:
        self.ua = ua
        self.on_update = on_update
        self.allowed = allowed
        self.transport: asyncio.DatagramTransport | None = None
        self._wake = asyncio.Event()
        self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.allowed and not any(ipaddress.ip_address(addr[0]) in net for net in self.allowed):
            self.dropped += 1
            return
        self.emit(self.ua.receive(data, (addr[0], addr[1]), self._now()))

    def emit(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Datagram):
                if self.transport is not None:
                    self.transport.sendto(out.data, out.addr)
            else:
                self.on_update(out)
        self._wake.set()  # the next timer may have moved

    async def run_timers(self) -> None:
        while True:
            self._wake.clear()
            at = self.ua.get_timer()
            delay = 3600.0 if at is None else max(0.0, at - self._now())
            if await wait_event(self._wake, delay):
                continue
            self.emit(self.ua.handle_timer(self._now()))
