"""The voice channel: `dial`/`cancel` effects → the SIP UAC; call events → signals (SPEC §6.1).

`sip/` knows SIP, not contacts; this adapter keeps which call is which contact's attempt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
from collections import Counter
from typing import Any

from metrics.recorder import Recorder
from sip.call import Answered, Ended, EndKind, Ringing, UacConfig
from sip.transport import UdpEndpoint
from sip.ua import CallUpdate, Output, UserAgent

from .config import SipSection
from .domain import effects as fx
from .domain.signals import Kind, Signal
from .domain.state import ContactState
from .domain.statuses import Channel
from .engine import Engine
from .store import Key

log = logging.getLogger("telgate.voice")

END_KIND = {
    EndKind.REJECTED: Kind.REJECTED,
    EndKind.UNREACHABLE: Kind.UNREACHABLE,
    EndKind.INVALID_NUMBER: Kind.INVALID_NUMBER,
    EndKind.FAILED: Kind.FAILED,
    EndKind.LOCAL_HANGUP: Kind.HANGUP,
    EndKind.REMOTE_HANGUP: Kind.CLIENT_HANGUP,
}


def sdp_offer(host: str, rtp_port: int) -> bytes:
    lines = [
        "v=0",
        f"o=telgate {secrets.randbelow(2**31)} 1 IN IP4 {host}",
        "s=telgate",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {rtp_port} RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def update_signal(update: CallUpdate, attempt: int) -> Signal | None:
    base: dict[str, Any] = {"source": "sip", "call_id": update.call_id}
    match update.event:
        case Ringing(status, reason, first):
            return Signal(
                Kind.RINGING,
                {**base, "kind": "ringing", "sip_code": status, "reason": reason, "first": first},
                attempt=attempt,
            )
        case Answered(status):
            return Signal(Kind.ANSWERED, {**base, "kind": "answered", "sip_code": status}, attempt=attempt)
        case Ended(kind, status, reason, q850, duration, _answered):
            signal_kind = END_KIND[kind]
            return Signal(
                signal_kind,
                {
                    **base,
                    "kind": str(signal_kind),
                    "sip_code": status,
                    "reason": reason,
                    "q850_cause": q850,
                    "duration_s": duration,
                },
                attempt=attempt,
                duration_s=duration,
            )
    return None


class VoiceChannel:
    """The ChannelPort for voice: one UDP endpoint, calls placed through `sip.pbx`."""

    channel = Channel.VOICE

    def __init__(self, engine: Engine, recorder: Recorder, sip: SipSection) -> None:
        assert sip.pbx
        self.engine = engine
        self.recorder = recorder
        self.sip = sip
        self.max_concurrent = sip.max_concurrent_calls
        self.max_rate = sip.max_cps
        host, _, port = sip.local.rpartition(":")
        self.bind = (host or "0.0.0.0", int(port))
        pbx_host, _, pbx_port = sip.pbx.rpartition(":")
        self.pbx_addr = (pbx_host, int(pbx_port or 5060))
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in (sip.allowed_sources or [pbx_host])]
        self.endpoint: UdpEndpoint | None = None
        self._pending: list[Output] = []  # what was sent before the socket was bound
        self.ua = UserAgent(self._uac_config(int(port)), self.pbx_addr, lambda: secrets.token_hex(6))
        self._calls: dict[str, tuple[Key, int]] = {}
        self._by_key: dict[Key, str] = {}
        self._active: Counter[str] = Counter()
        self.ready = asyncio.Event()

    def active(self, campaign_id: str | None = None) -> int:
        return sum(self._active.values()) if campaign_id is None else self._active[campaign_id]

    def _uac_config(self, bound_port: int) -> UacConfig:
        host = self.sip.public_address or (self.bind[0] if self.bind[0] != "0.0.0.0" else "127.0.0.1")
        public_host, _, public_port = host.partition(":")
        sip = self.sip
        return UacConfig(
            local_host=public_host,
            local_port=int(public_port or bound_port),
            pbx=sip.pbx or "",
            transport=sip.transport.upper(),
            from_user=sip.from_user,
            from_display=sip.from_display,
            username=sip.username,
            password=sip.password.get_secret_value() if sip.password else None,
        )

    def _emit(self, outputs: list[Output]) -> None:
        if self.endpoint is None:
            self._pending += outputs
        else:
            self.endpoint.emit(outputs)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def submit(self, effect: fx.Effect, contact: ContactState) -> None:
        key = (contact.campaign_id, contact.contact_id)
        if isinstance(effect, fx.Dial):
            ring = contact.policy.ring_timeout_s or self.sip.ring_timeout_s
            host = self.ua.cfg.local_host
            call_id, outputs = self.ua.place(contact.phone or "", ring, sdp_offer(host, 40000), self._now())
            self._calls[call_id] = (key, effect.attempt)
            self._by_key[key] = call_id
            self._active[contact.campaign_id] += 1
            self._emit(outputs)
        elif isinstance(effect, fx.CancelCall) and (ringing := self._by_key.get(key)) is not None:
            self._emit(self.ua.cancel(ringing, self._now()))

    def _on_update(self, update: CallUpdate) -> None:
        owner = self._calls.get(update.call_id)
        if owner is None:
            return
        key, attempt = owner
        if isinstance(update.event, Ended):
            del self._calls[update.call_id]
            if self._by_key.get(key) == update.call_id:
                del self._by_key[key]
            self._active[key[0]] -= 1
            if self._active[key[0]] <= 0:
                del self._active[key[0]]
        signal = update_signal(update, attempt)
        if signal is not None:
            future = self.engine.submit(lambda unit: unit.apply(key, signal))
            future.add_done_callback(_log_failure)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(self.ua, self._on_update, self.allowed), local_addr=self.bind
        )
        self.ua.cfg = self._uac_config(transport.get_extra_info("sockname")[1])
        self.endpoint = protocol
        pending, self._pending = self._pending, []
        protocol.emit(pending)
        self.ready.set()
        log.info(
            "sip endpoint up",
            extra={"local": f"{self.ua.cfg.local_host}:{self.ua.cfg.local_port}", "pbx": self.sip.pbx},
        )
        try:
            await protocol.run_timers()
        finally:
            transport.close()


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("applying a call event failed", exc_info=future.exception())
