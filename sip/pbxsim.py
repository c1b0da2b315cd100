"""A PBX simulator for `telgate demo`: a SIP UAS on UDP that answers each INVITE with an outcome drawn
with realistic shares — answered (and later hung up by the callee), busy, no answer (rings until the
caller CANCELs), number not found, and network congestion (503 with Q.850 cause 34) — after a ringing
delay. Real SIP on loopback, built on the same codec as the UAC; it is a demo peer, not a PBX.

Timings are divided by `speed`, so a demo can compress minutes of ringing and talking into seconds.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from .call import respond
from .message import Headers, ParseError, Request, Response, parse, uri_of

# (outcome, share) — roughly what an outbound B2C campaign sees on mobile numbers
SHARES: tuple[tuple[str, float], ...] = (
    ("answer", 0.55),
    ("busy", 0.15),
    ("noanswer", 0.15),
    ("notfound", 0.08),
    ("congestion", 0.07),
)


@dataclass
class _SimCall:
    invite: Request
    addr: tuple[str, int]
    outcome: str
    tag: str
    last: Response | None = None
    handles: list[asyncio.TimerHandle] = field(default_factory=list)
    final_sent: bool = False
    answered: bool = False
    ended: bool = False


class PbxSimulator(asyncio.DatagramProtocol):
    def __init__(self, speed: float = 1.0, seed: int | None = None, shares: tuple[tuple[str, float], ...] = SHARES):
        self.speed = max(speed, 0.01)
        self.rng = random.Random(seed)
        self.shares = shares
        self.transport: asyncio.DatagramTransport | None = None
        self.calls: dict[str, _SimCall] = {}
        self.stats: Counter[str] = Counter()
        # the wire ledger: every initial INVITE received, by Call-ID → Request-URI user (a demo or a test
        # compares it with the contacts' attempts: the wire follows the transition, SPEC §9)
        self.invited: dict[str, str] = {}

    def invites_by_number(self) -> Counter[str]:
        """Initial INVITEs received (distinct Call-IDs) per dialled number."""
        return Counter(self.invited.values())

    # -- plumbing ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    @property
    def address(self) -> str:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    def _send(self, message: Request | Response, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(message.encode(), addr)

    def _later(self, call: _SimCall, seconds: float, fn: object) -> None:
        loop = asyncio.get_running_loop()
        call.handles.append(loop.call_later(seconds / self.speed, fn))  # type: ignore[arg-type]

    def draw(self) -> str:
        x = self.rng.random()
        for outcome, share in self.shares:
            x -= share
            if x < 0:
                return outcome
        return self.shares[-1][0]

    # -- requests in ---------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse(data)
        except ParseError:
            self.stats["malformed"] += 1
            return
        if isinstance(message, Response):
            return  # the 200 to our BYE
        call_id = message.headers.get("call-id") or ""
        method = message.method
        if method == "INVITE":
            self._invite(message, addr, call_id)
        elif method == "ACK":
            pass
        elif method == "CANCEL":
            self._cancel(message, addr, call_id)
        elif method == "BYE":
            self._send(respond(message, 200, "OK"), addr)
            call = self.calls.pop(call_id, None)
            if call is not None:
                self._stop(call)
        elif method == "OPTIONS":
            self._send(respond(message, 200, "OK", to_tag=secrets.token_hex(4)), addr)
        else:
            self._send(respond(message, 501, "Not Implemented", to_tag=secrets.token_hex(4)), addr)

    def _invite(self, invite: Request, addr: tuple[str, int], call_id: str) -> None:
        known = self.calls.get(call_id)
        if known is not None:  # a retransmission (or the re-INVITE of a challenge, which we never send)
            if known.last is not None:
                self._send(known.last, addr)
            return
        if call_id in self.invited:  # a late retransmission of a call that has ended
            return
        self.invited[call_id] = invite.uri.partition(":")[2].partition("@")[0]
        call = _SimCall(invite, addr, self.draw(), secrets.token_hex(6))
        self.calls[call_id] = call
        self.stats[call.outcome] += 1
        self._reply(call, 100, "Trying", tag=False)
        ring_after = self.rng.uniform(0.3, 1.5)
        self._later(call, ring_after, lambda: self._reply(call, 180, "Ringing"))
        decide_after = ring_after + self.rng.uniform(1.0, 6.0)
        if call.outcome == "answer":
            self._later(call, decide_after, lambda: self._answer(call))
        elif call.outcome == "busy":
            self._later(call, ring_after + self.rng.uniform(0.2, 2.0), lambda: self._final(call, 486, "Busy Here", 17))
        elif call.outcome == "notfound":
            self._later(call, 0.2, lambda: self._final(call, 404, "Not Found", 1))
        elif call.outcome == "congestion":
            self._later(call, 0.3, lambda: self._final(call, 503, "Service Unavailable", 34))
        # noanswer: rings until the caller's CANCEL

    def _reply(self, call: _SimCall, status: int, reason: str, tag: bool = True, q850: int | None = None) -> None:
        if call.final_sent:
            return
        resp = respond(call.invite, status, reason, to_tag=call.tag if tag else None)
        if q850 is not None:
            resp = Response(resp.status, resp.reason, resp.headers.with_("Reason", f"Q.850;cause={q850}"))
        call.last = resp
        self._send(resp, call.addr)

    def _final(self, call: _SimCall, status: int, reason: str, q850: int | None = None) -> None:
        self._reply(call, status, reason, q850=q850)
        call.final_sent = True
        call_id = call.invite.headers.get("call-id") or ""
        # kept a while to answer retransmissions of the INVITE with the same final, then forgotten
        asyncio.get_running_loop().call_later(32.0, self.calls.pop, call_id, None)

    def _answer(self, call: _SimCall) -> None:
        if call.final_sent:
            return
        assert self.transport is not None
        own_host, own_port = self.transport.get_extra_info("sockname")[:2]
        body = (
            f"v=0\r\no=pbxsim 1 1 IN IP4 {own_host}\r\ns=-\r\nc=IN IP4 {own_host}\r\nt=0 0\r\n"
            "m=audio 9 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n"
        ).encode()
        resp = respond(call.invite, 200, "OK", to_tag=call.tag)
        h = resp.headers.with_("Contact", f"<sip:pbx@{own_host}:{own_port}>").with_("Content-Type", "application/sdp")
        call.last = Response(200, "OK", h, body)
        call.final_sent = call.answered = True
        self._send(call.last, call.addr)
        self._later(call, self.rng.uniform(3.0, 15.0), lambda: self._hang_up(call))

    def _hang_up(self, call: _SimCall) -> None:
        call_id = call.invite.headers.get("call-id") or ""
        if self.calls.pop(call_id, None) is None:
            return  # the caller hung up first
        assert self.transport is not None
        own_host, own_port = self.transport.get_extra_info("sockname")[:2]
        ih = call.invite.headers
        contact = ih.get_all("contact")
        target = uri_of(contact[0]) if contact else call.invite.uri
        h = (
            Headers()
            .with_("Via", f"SIP/2.0/UDP {own_host}:{own_port};branch=z9hG4bK{secrets.token_hex(6)};rport")
            .with_("Max-Forwards", "70")
            .with_("From", f"{ih.get('to')};tag={call.tag}")
            .with_("To", ih.get("from") or "")
            .with_("Call-ID", call_id)
            .with_("CSeq", "1 BYE")
            .with_("Reason", "Q.850;cause=16")
        )
        self._send(Request("BYE", target, h), call.addr)
        self.stats["callee_hangup"] += 1

    def _cancel(self, cancel: Request, addr: tuple[str, int], call_id: str) -> None:
        self._send(respond(cancel, 200, "OK"), addr)
        call = self.calls.get(call_id)
        if call is None or call.final_sent:
            return
        self._final(call, 487, "Request Terminated")
        self._stop(call)
        self.calls.pop(call_id, None)
        self.stats["canceled"] += 1

    def _stop(self, call: _SimCall) -> None:
        for handle in call.handles:
            handle.cancel()
        call.handles.clear()
