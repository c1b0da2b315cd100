"""A UDP relay in front of a real SIP peer, for faults SIPp cannot script: the network between telgate and a PBX.

It forwards datagrams both ways unchanged (SIPp answers the source address, so it talks to the relay).
The test can make it drop OPTIONS requests — the PBX "dies" for keepalives while its dialogs go on — and
hold back NOTIFY requests from the PBX until it releases them, to decide when a transfer completes.
Nothing is made up: every message still comes from and goes to the real peer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

Addr = tuple[str, int]


def _method(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode("ascii", "replace")


@dataclass
class _Side(asyncio.DatagramProtocol):
    relay: UdpRelay
    front: bool
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.front:
            self.relay.from_client(data, addr)
        else:
            self.relay.from_peer(data)


@dataclass
class UdpRelay:
    peer: Addr
    drop_options: bool = False
    hold_notify: bool = False
    dropped: int = 0
    held: list[bytes] = field(default_factory=list)
    _client: Addr | None = None
    _front: _Side | None = None
    _back: _Side | None = None

    async def start(self) -> UdpRelay:
        loop = asyncio.get_running_loop()
        front, back = _Side(self, True), _Side(self, False)
        await loop.create_datagram_endpoint(lambda: front, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: back, local_addr=("127.0.0.1", 0))
        self._front, self._back = front, back
        return self

    @property
    def address(self) -> str:
        assert self._front is not None and self._front.transport is not None
        host, port = self._front.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def from_client(self, data: bytes, addr: Addr) -> None:
        self._client = addr
        if self.drop_options and _method(data) == "OPTIONS":
            self.dropped += 1
            return
        assert self._back is not None and self._back.transport is not None
        self._back.transport.sendto(data, self.peer)

    def from_peer(self, data: bytes) -> None:
        if self.hold_notify and _method(data) == "NOTIFY":
            self.held.append(data)
            return
        self._to_client(data)

    def _to_client(self, data: bytes) -> None:
        if self._client is not None and self._front is not None and self._front.transport is not None:
            self._front.transport.sendto(data, self._client)

    def release(self) -> None:
        """Stop holding NOTIFYs and deliver the ones held, in order."""
        self.hold_notify = False
        held, self.held = self.held, []
        for data in held:
            self._to_client(data)

    def close(self) -> None:
        for side in (self._front, self._back):
            if side is not None and side.transport is not None:
                side.transport.close()
