"""The asyncio shell for media: one UDP socket for every call's RTP.

We offer its port in every SDP. What arrives on it goes to the call it belongs to (`attach`): found by the
sender's address, which is the far end's SDP answer's; a far end that sends from another port of the same
host (symmetric RTP behind a NAT, a media server's pool) is latched to the one call of that host still
waiting for its first packet. A packet that belongs to no listening call is counted and discarded. Which
stream inside a call (SSRC), order, loss and decoding are sip/rtp_in.py's. A prompt is sent from it
as 20 ms RTP packets to the address the far end's SDP answer named, paced by the loop clock (packets are
scheduled on absolute times, so a late wake-up does not stretch the prompt).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import cast

from .rtp import PACKET_INTERVAL_S, RtpStream
from .sdp import Media


class MediaEndpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received_packets = 0
        self.received_bytes = 0
        self.sent_packets = 0
        self.stray_packets = 0  # from an address no listening call has
        self._sinks: dict[tuple[str, int], Callable[[bytes], None]] = {}
        self._waiting: dict[str, list[tuple[str, int]]] = {}  # host → attached addresses not heard from yet

    def attach(self, remote: tuple[str, int], sink: Callable[[bytes], None]) -> None:
        """Hand what `remote` (the far end's SDP address) sends to `sink` until `detach`."""
        self._sinks[remote] = sink
        self._waiting.setdefault(remote[0], []).append(remote)

    def detach(self, remote: tuple[str, int]) -> None:
        sink = self._sinks.pop(remote, None)
        for addr in [a for a, s in self._sinks.items() if s is sink]:  # the address it was latched to
            del self._sinks[addr]
        waiting = self._waiting.get(remote[0])
        if waiting is not None and remote in waiting:
            waiting.remove(remote)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received_packets += 1
        self.received_bytes += len(data)
        addr = (addr[0], addr[1])  # IPv6 adds flow info and scope
        sink = self._sinks.get(addr)
        waiting = self._waiting.get(addr[0])
        if sink is None and waiting:  # symmetric RTP: latch the first call of this host not heard from yet
            sink = self._sinks.get(waiting[0])
            if sink is not None:
                self._sinks[addr] = sink
        if waiting:
            for remote in list(waiting):
                if self._sinks.get(remote) is sink:
                    waiting.remove(remote)
        if sink is None:
            self.stray_packets += 1
            return
        sink(data)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable from a far end that stopped listening: nothing to do

    async def play(self, media: Media, encoded: bytes) -> None:
        """Send a G.711 prompt (already in the far end's codec) as paced RTP packets."""
        stream = RtpStream(
            ssrc=secrets.randbits(32),
            payload_type=media.payload_type,
            sequence=secrets.randbelow(2**16),
            timestamp=secrets.randbits(32),
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, packet in enumerate(stream.packets(encoded)):
            if self.transport is None or self.transport.is_closing():
                return
            self.transport.sendto(packet, (media.host, media.port))
            self.sent_packets += 1
            await asyncio.sleep(max(0.0, start + (i + 1) * PACKET_INTERVAL_S - loop.time()))
