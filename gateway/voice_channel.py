"""The voice channel: `dial`/`cancel` effects → the SIP UAC; call events → signals (SPEC §6.1).

`sip/` knows SIP, not contacts; this adapter keeps which call is which contact's attempt.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import secrets
from collections import Counter
from typing import Any

from metrics.recorder import Recorder
from sip.call import Answered, Ended, EndKind, Ringing, UacConfig
from sip.register import Registration
from sip.transport import UdpEndpoint
from sip.ua import CallUpdate, Output, PingAnswered, UserAgent

from .config import SipSection
from .domain import effects as fx
from .domain.signals import Kind, Signal
from .domain.state import ContactState
from .domain.statuses import Channel
from .engine import Engine, pause_channel
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
        self.state = "up"  # presence `pbx`: up until 3 keepalive intervals pass unanswered
        self._answered_since_tick = True
        self._missed = 0
        self._failed_in_a_row = 0
        recorder.pbx_up.set(1)

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

    def _on_update(self, update: CallUpdate | PingAnswered) -> None:
        if isinstance(update, PingAnswered):
            self._answered_since_tick = True
            self.recorder.pbx_options_rtt.observe(update.rtt_s)
            if self.state == "down":
                self.state = "up"
                self.recorder.pbx_up.set(1)
                log.info("pbx answers again; paused campaigns stay paused until resumed")
            return
        owner = self._calls.get(update.call_id)
        if owner is None:
            return
        key, attempt = owner
        if isinstance(update.event, Ended):
            failed = update.event.kind is EndKind.FAILED
            self._failed_in_a_row = self._failed_in_a_row + 1 if failed else 0
            if self._failed_in_a_row >= FAILED_DIALS_DOWN:
                self._failed_in_a_row = 0
                self._pbx_down(f"{FAILED_DIALS_DOWN} failed dials in a row")
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

    def _pbx_down(self, why: str) -> None:
        if self.state == "down":
            return
        self.state = "down"
        self.recorder.pbx_up.set(0)
        log.error("pbx down, voice campaigns pause", extra={"why": why})
        future = self.engine.submit(functools.partial(pause_channel, channel=Channel.VOICE, reason=f"pbx_down: {why}"))
        future.add_done_callback(_log_failure)

    async def _keepalive(self) -> None:
        """OPTIONS to the PBX every `options_interval_s`; three intervals without an answer is down."""
        while True:
            await asyncio.sleep(self.sip.options_interval_s)  # the first one an interval after start
            if not self._answered_since_tick:
                self._missed += 1
                if self._missed >= 3:
                    self._pbx_down(f"no answer to OPTIONS for {self._missed} intervals")
            else:
                self._missed = 0
            self._answered_since_tick = False
            self._emit(self.ua.ping(self._now()))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(self.ua, self._on_update, self.allowed), local_addr=self.bind
        )
        self.ua.cfg = self._uac_config(transport.get_extra_info("sockname")[1])
        if self.sip.register_:
            self.ua.registration = Registration(self.ua.cfg, self.sip.register_expires_s, lambda: secrets.token_hex(6))
        self.endpoint = protocol
        pending, self._pending = self._pending, []
        protocol.emit(pending)
        self.ready.set()
        log.info(
            "sip endpoint up",
            extra={"local": f"{self.ua.cfg.local_host}:{self.ua.cfg.local_port}", "pbx": self.sip.pbx},
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(protocol.run_timers(), name="sip-timers")
                tg.create_task(self._keepalive(), name="sip-keepalive")
        finally:
            transport.close()


FAILED_DIALS_DOWN = 5


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("applying a call event failed", exc_info=future.exception())
