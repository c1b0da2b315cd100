"""The asyncio shell for media: one UDP socket for every call's RTP.

We offer its port in every SDP; what arrives on it is counted and discarded. A prompt is sent from it
as 20 ms RTP packets to the address the far end's SDP answer named, paced by the loop clock (packets are
scheduled on absolute times, so a late wake-up does not stretch the prompt).
"""

from __future__ import annotations

import asyncio
import secrets
from typing import cast

from .rtp import PACKET_INTERVAL_S, RtpStream
from .sdp import Media


class MediaEndpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received_packets = 0
        self.received_bytes = 0
        self.sent_packets = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received_packets += 1  # RTP from the far end: discarded
        self.received_bytes += len(data)

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
