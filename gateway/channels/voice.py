"""The voice channel: `dial`/`cancel` effects → the SIP UAC; call events → signals (SPEC §6.1).

`sip/` knows SIP, not contacts; this adapter keeps which call is which contact's attempt. It decides
nothing: what an answered call does (play the prompt, transfer, hang up) are effects of the domain's
table rows, carried out here after their commit and reported back as signals (`prompt_done`,
`transfer_done`). Prompts play in the channel's task group.

Whether each PBX is up is `sip.health`'s to decide (its rules are stated there): this shell feeds it every
response, every request with no response, every call's end and every connection failure, sends the
OPTIONS it asks for, and re-arms its one timer. Several PBXs (`sip.pbx` as a list): a new call goes to the
best PBX that is up (lowest priority number; equal ones in turn), and every request of its dialog stays
with that PBX. Voice campaigns pause (`pbx_down`, `engine.pause_channel`) when the core says the last PBX
went down. Over TCP and TLS each PBX has a connection of its own (its own certificate check over TLS).

Who answered and what they pressed (docs/voice.md §6.3, §6.4): `ListenAmd` and `Gather` give the call a
listener (sip/listen.py) fed with the RTP the far end sends (the media socket hands each far end's packets
to its call) and with the keys its INFOs carry; what it hears is reported as `amd`, `machine_end` and
`digits`. Its timeouts share one timer task of the channel. A failure inside one call's analysis is logged
once and ends that call's listening (`unknown`, `machine_end_other`, or no digits); the channel goes on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import secrets
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import SipSection
from gateway.domain import effects as fx
from gateway.domain.answering import AmdSettings, DigitAction, GatherSettings, digit_action
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CallerId, ContactState
from gateway.domain.statuses import Channel
from gateway.engine.commands import prompt_path
from gateway.engine.engine import Engine, pause_channel
from gateway.store import Key
from metrics.recorder import Recorder
from sip import sdp
from sip.amd import AmdParams
from sip.call import Answered, DtmfPressed, Ended, EndKind, Redirected, Ringing, Transferred, UacConfig
from sip.dtmf import Gather as GatherCore
from sip.health import PbxHealth, ProbeDue, WentDown, WentUp
from sip.identity import Caller
from sip.listen import CallListener, Gathered, GreetingEnded, Heard, Pressed, Verdict
from sip.media import MediaEndpoint
from sip.register import Registration
from sip.rtp import PromptError, encode, load_wav
from sip.sdp import TELEPHONE_EVENT
from sip.transport import TLS_PORT, LinkFailed, LinkLost, TcpEndpoint, TlsEndpoint, UdpEndpoint, Update, client_context
from sip.ua import Addr, CallUpdate, Output, PbxAnswered, PbxSilent, PingAnswered, UserAgent
from sip.waiting import wait_event

log = logging.getLogger("telgate.voice")

END_KIND = {
    EndKind.REJECTED: Kind.REJECTED,
    EndKind.UNREACHABLE: Kind.UNREACHABLE,
    EndKind.INVALID_NUMBER: Kind.INVALID_NUMBER,
    EndKind.FAILED: Kind.FAILED,
    EndKind.LOCAL_HANGUP: Kind.HANGUP,
    EndKind.REMOTE_HANGUP: Kind.CLIENT_HANGUP,
}


def update_signal(update: CallUpdate, attempt: int) -> Signal | None:
    base: dict[str, Any] = {"source": "sip", "call_id": update.call_id, **dict(update.evidence)}
    match update.event:
        case Ringing(status, reason, first):
            return Signal(
                Kind.RINGING,
                {**base, "kind": "ringing", "sip_code": status, "reason": reason, "first": first},
                attempt=attempt,
            )
        case Answered(status):
            return Signal(Kind.ANSWERED, {**base, "kind": "answered", "sip_code": status}, attempt=attempt)
        case Transferred(True, status, reason):
            return Signal(
                Kind.CONNECTED, {**base, "kind": "connected", "sip_code": status, "reason": reason}, attempt=attempt
            )
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


@dataclass
class Pbx:
    """One PBX of `sip.pbx`: where it is, its priority; whether it answers is `health`'s (sip/health.py)."""

    address: str  # host:port as configured: the Request-URI's host and the OPTIONS target
    addr: Addr
    priority: int
    health: PbxHealth
    tls_server_name: str | None = None  # over TLS: the name its certificate must carry (None: its host)

    @property
    def peer(self) -> tuple[str, Addr]:
        return self.address, self.addr

    @property
    def state(self) -> str:
        return "up" if self.health.is_up(self.address) else "down"

    @property
    def why(self) -> str | None:
        """Why it went down (kept while it is down)."""
        return self.health.why(self.address)


def _addr(address: str, default_port: int = 5060) -> Addr:
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    return host, int(port or default_port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def amd_params(settings: AmdSettings) -> AmdParams:
    """The dial's (or campaign's) `amd` as app_amd's parameters (sip/amd.py); the rest are sip/amd.py's."""
    return AmdParams(
        initial_silence=settings.initial_silence_ms,
        greeting=settings.greeting_ms,
        after_greeting_silence=settings.after_greeting_silence_ms,
        total_analysis_time=settings.total_analysis_ms,
        min_word_length=settings.min_word_length_ms,
        between_words_silence=settings.between_words_silence_ms,
        maximum_number_of_words=settings.maximum_number_of_words,
        maximum_word_length=settings.maximum_word_length_ms,
        silence_threshold=settings.silence_threshold,
        beep_wait_ms=settings.beep_wait_ms,
    )


def gather_core(settings: GatherSettings) -> GatherCore:
    return GatherCore(settings.max_digits, settings.finish_on_key, settings.timeout_s)


AMD_CAUSE = {"CED": "FAX"}  # sip/amd.py's cause → the contract's (docs/voice.md §6.3)


def sip_caller(caller: CallerId | None) -> Caller | None:
    """The domain's caller ID of an attempt → the SIP one (None: `sip.from_user`)."""
    if caller is None:
        return None
    return Caller(caller.number, caller.name, bool(caller.withheld))


@dataclass
class _Placed:
    """What the channel keeps per call: whose attempt it is, where it went, what its answer negotiated."""

    key: Key
    attempt: int
    pbx: Pbx
    dialed_at: float = 0.0
    answered: bool = False
    media: sdp.Media | None = None  # where the far end takes RTP (the answer's SDP): a prompt goes there
    prompt: asyncio.Task[None] | None = None  # the prompt playing (a task of the channel's task group)
    redirect: dict[str, Any] | None = None  # the 301/302 followed, in the evidence of every later event
    answered_at: float = 0.0  # the loop's time of the 2xx: the received audio's timeline starts there
    listener: CallListener | None = None  # AMD and gathers (sip/listen.py), from the first ListenAmd/Gather
    digit_map: dict[str, DigitAction] | None = None  # the contact's, to count what a gather meant


class VoiceChannel:
    """The ChannelPort for voice: one SIP endpoint (UDP, TCP or TLS) and one RTP port; calls go to `sip.pbx`."""

    channel = Channel.VOICE

    def __init__(self, engine: Engine, recorder: Recorder, sip: SipSection, prompts_dir: Path | None = None) -> None:
        assert sip.pbx
        self.engine = engine
        self.recorder = recorder
        self.sip = sip
        self.prompts_dir = prompts_dir
        self.max_concurrent = sip.max_concurrent_calls
        self.max_rate = sip.max_cps
        host, _, port = sip.local.rpartition(":")
        self.bind = (host or "0.0.0.0", int(port))
        default_port = TLS_PORT if sip.transport == "tls" else 5060
        self.health = PbxHealth([e.address for e in sip.pbxs], sip.options_interval_s)
        self._health_wake = asyncio.Event()
        self._health_armed: float | None = None  # when the health timer sleeps until
        self.pbxs = [
            Pbx(
                e.address,
                _addr(e.address, default_port),
                e.priority,
                self.health,
                e.tls_server_name or sip.tls_server_name,
            )
            for e in sip.pbxs
        ]
        self._by_addr = {p.addr: p for p in self.pbxs}
        self._by_address = {p.address: p for p in self.pbxs}
        self._turn = 0  # round-robin among PBXs of the same priority
        self.pbx_addr = self.pbxs[0].addr
        # where SIP may come from: `allowed_sources`, else every PBX (one given by name: its addresses at start)
        sources = sip.allowed_sources or [p.addr[0] for p in self.pbxs if _is_ip(p.addr[0])]
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in sources]
        self._named = [] if sip.allowed_sources else [p for p in self.pbxs if not _is_ip(p.addr[0])]
        self.endpoint: UdpEndpoint | TcpEndpoint | TlsEndpoint | None = None
        self.media = MediaEndpoint()
        self.rtp_port = 0
        self._pending: list[Output] = []  # what was sent before the socket was bound
        self.ua = UserAgent(self._uac_config(int(port)), self.pbx_addr, lambda: secrets.token_hex(6))
        recorder.sip.responses = lambda: self.ua.responses
        recorder.sip.retransmissions = lambda: self.ua.retransmissions
        recorder.sip.dialogs = self.ua.dialogs
        self._calls: dict[str, _Placed] = {}
        self._by_key: dict[Key, str] = {}
        self._active: Counter[str] = Counter()
        self._prompts: dict[tuple[str, int], bytes] = {}
        self._tasks: asyncio.TaskGroup | None = None  # run()'s task group: the prompts play in it
        self._listening: dict[str, _Placed] = {}  # calls whose listener may need a tick
        self._listen_wake = asyncio.Event()
        self._listen_armed: float | None = None  # when the listeners' timer sleeps until
        self.ready = asyncio.Event()
        for pbx in self.pbxs:
            recorder.pbx_up.labels(pbx.address).set(1)

    @property
    def state(self) -> str:
        """Presence `pbx`: "up" while any PBX answers, "down" when none does."""
        return "up" if self.health.any_up else "down"

    def choose(self) -> Pbx:
        """The PBX for a new call: the best priority among those up (all of them when none is), in turn."""
        pool = [p for p in self.pbxs if self.health.is_up(p.address)] or self.pbxs
        best = min(p.priority for p in pool)
        tier = [p for p in pool if p.priority == best]
        self._turn += 1
        return tier[self._turn % len(tier)]

    def active(self, campaign_id: str | None = None) -> int:
        """Calls in flight: the user agent's own dialogs (the dispatcher's room, the drain and
        `telgate_calls_active` read the same count); per campaign, the calls this channel placed for it."""
        return self.ua.dialogs() if campaign_id is None else self._active[campaign_id]

    def active_counts(self) -> dict[str, int]:
        """Calls this channel placed, per campaign: a copy taken in the event loop (the dispatcher's turn
        reads it on the store thread)."""
        return dict(self._active)

    def _uac_config(self, bound_port: int) -> UacConfig:
        host = self.sip.public_address or (self.bind[0] if self.bind[0] != "0.0.0.0" else "127.0.0.1")
        public_host, _, public_port = host.partition(":")
        sip = self.sip
        return UacConfig(
            local_host=public_host,
            local_port=int(public_port or bound_port),
            pbx=self.pbxs[0].address,
            transport=sip.transport.upper(),
            from_user=sip.from_user,
            from_display=sip.from_display,
            username=sip.username,
            password=sip.password.get_secret_value() if sip.password else None,
            t1=sip.t1_ms / 1000.0,
            dial_format=sip.dial_format,
            dial_prefix=sip.dial_prefix,
            user_phone=sip.user_phone,
            assert_identity=sip.assert_identity,
            tls_scheme=sip.tls_scheme,
            session_expires_s=sip.session_expires_s,
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
            ring = contact.policy.ring_timeout_s  # `sip.ring_timeout_s` when the dial gave none: at intake
            if ring is None:
                raise ValueError("a voice contact's policy has its ring timeout (CommandContext.voice_policy)")
            offer = sdp.offer(self.ua.cfg.local_host, self.rtp_port, secrets.randbelow(2**31))
            pbx = self.choose()
            call_id, outputs = self.ua.place(
                contact.phone or "",
                ring,
                offer,
                self._now(),
                caller=sip_caller(contact.attempt_caller),
                pbx=None if len(self.pbxs) == 1 else pbx.peer,
            )
            self._calls[call_id] = _Placed(key, effect.attempt, pbx, self._now())
            self.recorder.call_placed(contact.campaign_id)
            self._by_key[key] = call_id
            self._active[contact.campaign_id] += 1
            self._emit(outputs)
        elif isinstance(effect, fx.CancelCall) and (ringing := self._by_key.get(key)) is not None:
            self._emit(self.ua.cancel(ringing, self._now()))
        elif isinstance(effect, fx.PlayPrompt | fx.Transfer | fx.HangUp | fx.ListenAmd | fx.Gather):
            self._answered_call(effect, key, contact)

    def _answered_call(
        self,
        effect: fx.PlayPrompt | fx.Transfer | fx.HangUp | fx.ListenAmd | fx.Gather,
        key: Key,
        contact: ContactState,
    ) -> None:
        """Carry out what the decision on an answered call asked, on the contact's call of that attempt (none:
        the call ended meanwhile, and its end is on its way to the engine)."""
        call_id = self._by_key.get(key)
        placed = self._calls.get(call_id) if call_id is not None else None
        attempt = contact.attempt
        if call_id is None or placed is None or placed.attempt != attempt:
            extra = {"campaign_id": key[0], "contact_id": key[1], "effect": type(effect).__name__}
            log.info("no call for the effect", extra=extra)
            return
        match effect:
            case fx.PlayPrompt(name, then_hang_up):
                if self._tasks is None:  # not running: nothing can be played
                    if then_hang_up:
                        self._emit(self.ua.hangup(call_id, self._now()))
                    else:
                        self._report(placed, Kind.PROMPT_DONE, {"source": "gateway", "kind": "prompt_done"})
                    return
                play = self._play(call_id, placed, name, then_hang_up)
                placed.prompt = self._tasks.create_task(play, name=f"prompt-{call_id}")
            case fx.ListenAmd(settings, until_end):
                if (listener := self._listener(call_id, placed)) is not None:
                    listener.listen_amd(amd_params(settings), until_end)
                    self._listening[call_id] = placed
                    self._rearm_listening(listener)
            case fx.Gather(settings):
                if (listener := self._listener(call_id, placed)) is not None:
                    placed.digit_map = contact.digit_map
                    listener.gather(gather_core(settings), self._now())
                    self._listening[call_id] = placed
                    self._rearm_listening(listener)
            case fx.Transfer(target):
                self._emit(self.ua.transfer(call_id, target, self._now()))
            case fx.HangUp():
                self._emit(self.ua.hangup(call_id, self._now()))

    def _report(self, placed: _Placed, kind: Kind, evidence: dict[str, Any]) -> None:
        """A signal of the call's own doing (its prompt ended, its transfer's outcome) to the engine."""
        signal = Signal(kind, evidence, attempt=placed.attempt)
        self.engine.submit_signal(placed.key, signal).add_done_callback(_log_failure)

    # -- after the answer: prompt, transfer, hang up ----------------------------------------------
    def _prompt_audio(self, name: str, payload_type: int) -> bytes:
        cached = self._prompts.get((name, payload_type))
        if cached is None:
            path = prompt_path(self.prompts_dir, name)
            if path is None:
                raise PromptError(f"prompt {name!r} is not a file name in sip.prompts_dir")
            cached = self._prompts[(name, payload_type)] = encode(load_wav(path), payload_type)
        return cached

    async def _play(self, call_id: str, placed: _Placed, name: str, then_hang_up: bool = False) -> None:
        """Play the prompt into the call, then report `prompt_done` (also when it could not be played) — or,
        `then_hang_up`, hang up (the contact already has its final status)."""
        try:
            if placed.media is None:
                log.warning("no media to play the prompt to", extra={"call_id": call_id})
            else:
                await self.media.play(placed.media, self._prompt_audio(name, placed.media.payload_type))
        except PromptError as exc:
            log.error("prompt not played", extra={"call_id": call_id, "why": str(exc)})
        except Exception as exc:  # a bug playing one call's prompt: that call goes on, not the channel's tasks
            log.error("prompt failed", exc_info=exc, extra={"call_id": call_id})
        if then_hang_up:
            self._emit(self.ua.hangup(call_id, self._now()))
            return
        self._report(placed, Kind.PROMPT_DONE, {"source": "sip", "kind": "prompt_done", "call_id": call_id})

    # -- what the far end sends: AMD and gathers (sip/listen.py) ----------------------------------------
    def _listener(self, call_id: str, placed: _Placed) -> CallListener | None:
        """The call's listener, made (and its far end's RTP attached) at the first ListenAmd/Gather."""
        if placed.listener is None:
            placed.listener = CallListener(placed.answered_at, TELEPHONE_EVENT)
            if placed.media is not None:
                media = placed.media
                self.media.attach((media.host, media.port), functools.partial(self._rtp, call_id))
        return placed.listener

    def _rtp(self, call_id: str, data: bytes) -> None:
        placed = self._calls.get(call_id)
        if placed is None or placed.listener is None or not placed.listener.active:
            return
        listener = placed.listener
        now = self._now()
        self._hear(call_id, placed, lambda: listener.packet(data, now))

    def _hear(self, call_id: str, placed: _Placed, listen: Callable[[], list[Heard]]) -> None:
        """Run one step of the call's listener and report what it heard. A failure inside it is that call's
        alone: logged once, its listening ends with what is still owed (`unknown`, `machine_end_other`, no
        digits), the channel goes on."""
        listener = placed.listener
        assert listener is not None
        try:
            heard = listen()
        except Exception as exc:
            log.error("call audio analysis failed; its listening ends", exc_info=exc, extra={"call_id": call_id})
            self._listening.pop(call_id, None)
            self._owed(call_id, placed, listener)
            return
        for item in heard:
            self._heard(call_id, placed, item)
        if not listener.active:
            self._listening.pop(call_id, None)
        else:
            self._rearm_listening(listener)

    def _owed(self, call_id: str, placed: _Placed, listener: CallListener) -> None:
        """What a listener that failed still owes its call: the verdict (`unknown`, cause ERROR), the
        greeting's end (`machine_end_other`), the gather's end (no digits). It listens no more (the
        far end's packets still reach `_rtp`, which finds nothing active)."""
        base: dict[str, Any] = {"source": "sip", "call_id": call_id, "amd_cause": "ERROR"}
        ms = round((self._now() - placed.answered_at) * 1000)
        if listener.amd is not None and listener.verdict is None:
            self.recorder.amd_result(placed.key[0], "unknown", ms / 1000)
            self._report(placed, Kind.AMD, {**base, "kind": "amd", "answered_by": "unknown", "amd_ms": ms})
        elif listener.amd is not None and listener.verdict is not None:
            evidence = {
                **base,
                "kind": "machine_end",
                "answered_by": "machine_end_other",
                "amd_ms": listener.verdict.ms,
            }
            self._report(placed, Kind.MACHINE_END, evidence)
        if listener.gathering:
            self._report(placed, Kind.DIGITS, {"source": "sip", "call_id": call_id, "kind": "digits", "digits": ""})
        listener.stop()

    def _heard(self, call_id: str, placed: _Placed, item: Heard) -> None:
        campaign = placed.key[0]
        base: dict[str, Any] = {"source": "sip", "call_id": call_id}
        match item:
            case Verdict(verdict):
                self.recorder.amd_result(campaign, verdict.answered_by, verdict.ms / 1000)
                evidence = {
                    **base,
                    "kind": "amd",
                    "answered_by": verdict.answered_by,
                    "amd_cause": AMD_CAUSE.get(verdict.cause, verdict.cause),
                    "amd_ms": verdict.ms,
                }
                log.info("amd verdict", extra={**evidence, "campaign_id": campaign})
                self._report(placed, Kind.AMD, evidence)
            case GreetingEnded(end, verdict):
                self.recorder.amd_result(campaign, end.answered_by, None)
                evidence = {
                    **base,
                    "kind": "machine_end",
                    "answered_by": end.answered_by,
                    "amd_cause": AMD_CAUSE.get(verdict.cause, verdict.cause),
                    "amd_ms": verdict.ms,
                    "end_ms": end.t_ms,
                }
                if end.beep_end_ms is not None:
                    evidence["beep_end_ms"] = end.beep_end_ms
                log.info("machine greeting ended", extra={**evidence, "campaign_id": campaign})
                self._report(placed, Kind.MACHINE_END, evidence)
            case Pressed(_digit, via):
                self.recorder.dtmf_digit(campaign, via)
            case Gathered(result, via):
                action = digit_action(placed.digit_map, result.digits)
                self.recorder.dtmf_gather(campaign, result.reason, str(action) if action else "no_input")
                evidence = {**base, "kind": "digits", "digits": result.digits, "finish": result.reason, "via": via}
                self._report(placed, Kind.DIGITS, evidence)

    def _rearm_listening(self, listener: CallListener) -> None:
        at = listener.deadline()
        if at is not None and (self._listen_armed is None or at < self._listen_armed):
            self._listen_wake.set()

    def _forget_listener(self, call_id: str, placed: _Placed) -> None:
        """The call ended: its far end's RTP detached, its AMD and gather dropped (nothing more is owed)."""
        self._listening.pop(call_id, None)
        if placed.listener is not None and placed.media is not None:
            self.media.detach((placed.media.host, placed.media.port))
        placed.listener = None

    async def _listen_timer(self) -> None:
        """The listeners' one timer: AMD when audio stops, gather timeouts, packets held for reordering."""
        while True:
            self._listen_wake.clear()
            due = [d for p in self._listening.values() if p.listener and (d := p.listener.deadline()) is not None]
            at = self._listen_armed = min(due, default=None)
            if await wait_event(self._listen_wake, None if at is None else max(0.0, at - self._now())):
                continue
            self._listen_armed = None
            now = self._now()
            for call_id, placed in list(self._listening.items()):
                listener = placed.listener
                if listener is None:
                    self._listening.pop(call_id, None)
                    continue
                at = listener.deadline()
                if at is not None and at <= now:
                    self._hear(call_id, placed, functools.partial(listener.tick, now))

    def _transferred(self, call_id: str, placed: _Placed, event: Transferred) -> None:
        """The REFER's outcome: counted, and reported (the domain keeps it and hangs up)."""
        self.recorder.call_transfers.labels("ok" if event.ok else "failed").inc()
        if not event.ok:
            log.warning("transfer failed", extra={"call_id": call_id, "sip_code": event.status, "why": event.reason})
        evidence = {"source": "sip", "kind": "transfer_done", "call_id": call_id, "ok": event.ok}
        self._report(placed, Kind.TRANSFER_DONE, {**evidence, "sip_code": event.status, "reason": event.reason})

    def _on_update(self, update: Update) -> None:
        if isinstance(update, PbxAnswered):
            if (pbx := self._by_addr.get(update.pbx)) is not None:
                self.health.response(pbx.address, self._now(), probe=update.method == "OPTIONS")
                self._health_events()
            return
        if isinstance(update, PbxSilent):
            if (pbx := self._by_addr.get(update.pbx)) is not None:
                if update.sent_at is not None:
                    self.health.probe_timed_out(pbx.address, self._now(), update.sent_at)
                else:
                    self.health.no_response(pbx.address, self._now())
                self._health_events()
            return
        if isinstance(update, LinkFailed | LinkLost):
            self._on_link(update)
            return
        if isinstance(update, PingAnswered):
            pbx = self._by_addr.get(update.pbx or self.pbx_addr, self.pbxs[0])
            self.recorder.pbx_options_rtt.labels(pbx.address).observe(update.rtt_s)
            return
        placed = self._calls.get(update.call_id)
        if placed is None:
            return
        key, attempt = placed.key, placed.attempt
        event = update.event
        if isinstance(event, Redirected):
            placed.redirect = {"sip_code": event.status, "contact": event.contact}
            return
        signal = update_signal(update, attempt)
        if signal is not None and placed.redirect is not None:
            signal = dataclasses.replace(signal, evidence={**signal.evidence, "redirect": placed.redirect})
        if isinstance(event, Ringing) and event.first:
            self.recorder.call_ringing(key[0], self._now() - placed.dialed_at)
        elif isinstance(event, Answered) and not placed.answered:
            placed.answered = True
            placed.answered_at = self._now()
            placed.media = event.media  # what the answer does is the domain's (effects after the commit)
        elif isinstance(event, DtmfPressed):
            listener = placed.listener
            if listener is not None and listener.active:
                now = self._now()
                self._hear(update.call_id, placed, lambda: listener.info(event.digit, now))
            return
        elif isinstance(event, Ended):
            self.recorder.call_ended(key[0], str(event.kind), placed.answered, event.duration_s)
        if isinstance(update.event, Ended):
            self.health.dial_ended(placed.pbx.address, self._now(), failed=update.event.kind is EndKind.FAILED)
            self._health_events()
            del self._calls[update.call_id]
            if self._by_key.get(key) == update.call_id:
                del self._by_key[key]
            self._active[key[0]] -= 1
            if self._active[key[0]] <= 0:
                del self._active[key[0]]
            if placed.prompt is not None and not placed.prompt.done():
                placed.prompt.cancel()
            self._forget_listener(update.call_id, placed)
        if signal is not None:
            future = self.engine.submit_signal(key, signal)
            future.add_done_callback(_log_failure)
        if isinstance(update.event, Transferred):
            self._transferred(update.call_id, placed, update.event)

    def _on_link(self, update: LinkFailed | LinkLost) -> None:
        """A connection to a PBX (TCP, TLS) could not be made (evidence for the health core), or dropped (the
        core asks for an OPTIONS to that PBX, which re-opens it and tells whether the PBX is still there)."""
        pbx = self._by_addr.get(update.pbx or self.pbx_addr, self.pbxs[0])
        if isinstance(update, LinkFailed):
            certificate = update.tls is not None
            why = f"tls: {update.tls}" if certificate else f"{update.transport} connection failed: {update.why}"
            self.health.transport_failed(pbx.address, self._now(), why, certificate=certificate)
        else:
            log.warning("sip connection to the pbx dropped", extra={"pbx": pbx.address, "why": update.why})
            self.health.link_lost(pbx.address, self._now())
        self._health_events()

    def _health_events(self) -> None:
        """Carry out what the health core decided: OPTIONS it asks for, the gauge and the log on each
        transition, and the pause of voice campaigns when the last PBX went down."""
        while (event := self.health.next_event()) is not None:
            match event:
                case ProbeDue(address):
                    peer = None if len(self.pbxs) == 1 else self._by_address[address].peer
                    self._emit(self.ua.ping(self._now(), peer))
                case WentUp(address):
                    self.recorder.pbx_up.labels(address).set(1)
                    log.info("pbx answers again; paused campaigns stay paused until resumed", extra={"pbx": address})
                case WentDown(address, why, all_down):
                    self._pbx_down(address, why, all_down)
        at = self.health.get_timer()  # wake the timer only when it must fire sooner (not on every response)
        if at is not None and (self._health_armed is None or at < self._health_armed):
            self._health_wake.set()

    def _pbx_down(self, address: str, why: str, all_down: bool) -> None:
        self.recorder.pbx_up.labels(address).set(0)
        if not all_down:
            log.error("pbx down, new calls go to the next one", extra={"pbx": address, "why": why})
            return
        log.error("pbx down, voice campaigns pause", extra={"pbx": address, "why": why})
        if len(self.pbxs) > 1:
            why = f"all {len(self.pbxs)} PBXs down, the last {address}: {why}"
        future = self.engine.submit(functools.partial(pause_channel, channel=Channel.VOICE, reason=f"pbx_down: {why}"))
        future.add_done_callback(_log_failure)

    async def _health_timer(self) -> None:
        """The health core's one timer: OPTIONS every `options_interval_s` (none when it is 0), and verdicts."""
        while True:
            self._health_wake.clear()
            at = self._health_armed = self.health.get_timer()
            if await wait_event(self._health_wake, None if at is None else max(0.0, at - self._now())):
                continue
            self._health_armed = None
            self.health.handle_timer(self._now())
            self._health_events()

    async def _resolve_sources(self) -> None:
        """A PBX given by name sends from the addresses its name has at start (a name that does not resolve
        admits nothing: set `sip.allowed_sources`); later changes of its DNS are not followed."""
        loop = asyncio.get_running_loop()
        for pbx in self._named:
            try:
                found = await loop.getaddrinfo(pbx.addr[0], pbx.addr[1], proto=socket.IPPROTO_TCP)
            except OSError as exc:
                log.error(
                    "pbx name does not resolve, nothing from it is admitted",
                    extra={"pbx": pbx.address, "why": str(exc)},
                )
                continue
            for *_, sockaddr in found:
                network = ipaddress.ip_network(sockaddr[0])
                if network not in self.allowed:
                    self.allowed.append(network)

    async def _open(self) -> tuple[UdpEndpoint | TcpEndpoint, int, asyncio.BaseTransport | None]:
        loop = asyncio.get_running_loop()
        sip = self.sip
        more = [p.addr for p in self.pbxs[1:]]
        if sip.transport == "tls":  # no listener: the port in Via/Contact is `local`'s (5061 when it is 0)
            context = client_context(sip.ca_file, sip.cert_file, sip.key_file)
            names = {p.addr: p.tls_server_name for p in self.pbxs if p.tls_server_name}
            tls = TlsEndpoint(
                self.ua, self._on_update, self.allowed, self.pbx_addr, context, more=more, server_names=names
            )
            return tls, self.bind[1] or TLS_PORT, None
        if sip.transport == "tcp":
            tcp = TcpEndpoint(self.ua, self._on_update, self.allowed, self.pbx_addr, more)
            port = await tcp.listen(*self.bind)
            return tcp, port, None
        transport, udp = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(self.ua, self._on_update, self.allowed), local_addr=self.bind
        )
        _large_receive_buffer(transport.get_extra_info("socket"))
        return udp, transport.get_extra_info("sockname")[1], transport

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        media_host = self.bind[0]
        media_transport, _ = await loop.create_datagram_endpoint(
            lambda: self.media, local_addr=(media_host, self.sip.rtp_port)
        )
        self.rtp_port = media_transport.get_extra_info("sockname")[1]
        # every analysed call's RTP lands here: at 300 calls the kernel's default buffer dropped packets
        _large_receive_buffer(media_transport.get_extra_info("socket"))
        await self._resolve_sources()
        endpoint, port, transport = await self._open()
        self.ua.cfg = self._uac_config(port)
        if self.sip.register_:
            self.ua.registration = Registration(self.ua.cfg, self.sip.register_expires_s, lambda: secrets.token_hex(6))
            self.ua.more_registrations = [  # with every other PBX too, each to its own address
                (
                    Registration(
                        dataclasses.replace(self.ua.cfg, pbx=pbx.address),
                        self.sip.register_expires_s,
                        lambda: secrets.token_hex(6),
                    ),
                    pbx.addr,
                )
                for pbx in self.pbxs[1:]
            ]
        self.endpoint = endpoint
        pending, self._pending = self._pending, []
        endpoint.emit(pending)
        self.health.start(self._now())
        if isinstance(endpoint, TcpEndpoint) and len(self.pbxs) > 1:
            # several PBXs over TCP/TLS: open each one's connection now with an OPTIONS, so that a PBX that
            # refuses us (or shows a bad certificate) is down before the first call would be sent to it
            for pbx in self.pbxs:
                self.health.probe(pbx.address, self._now())
            self._health_events()
        self.ready.set()
        log.info(
            "sip endpoint up",
            extra={
                "local": f"{self.ua.cfg.local_host}:{self.ua.cfg.local_port}",
                "transport": self.sip.transport,
                "rtp_port": self.rtp_port,
                "pbx": [p.address for p in self.pbxs],
            },
        )
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(endpoint.run_timers(), name="sip-timers")
                tg.create_task(self._health_timer(), name="sip-pbx-health")
                tg.create_task(self._listen_timer(), name="sip-call-listeners")
        finally:
            self._tasks = None
            if transport is not None:
                transport.close()
            if isinstance(endpoint, TcpEndpoint):
                endpoint.close()
            media_transport.close()


RECEIVE_BUFFER = 8 * 1024 * 1024


def _large_receive_buffer(sock: Any) -> None:
    """Responses wait in the kernel while the loop is busy; a small UDP buffer would drop them, and a
    PBX does not retransmit a final it already sent for an INVITE it considers done (seen at 300 calls/s
    with SIPp). Like Kamailio, ask for a large buffer: forced when allowed, else up to net.core.rmem_max."""
    if sock is None:
        return
    for option in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return
        except OSError:
            continue


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("applying a call event failed", exc_info=future.exception())
