"""One outbound call as a UAC (RFC 3261 §12 to §15), sans-IO: messages and `now` in, events out.

It owns the INVITE transaction (and the re-INVITE after a 401/407), the CANCEL, the dialog, the ACK
of every 2xx and the BYE. Every request goes to the outbound proxy (the PBX): in-dialog requests carry
the dialog's route set and remote target, so a Record-Routing proxy such as Kamailio sees them.

Rules, in the order SPEC §6.1 states them:
- CANCEL only after a provisional response (§9.1); a cancel asked for earlier waits for one;
- the ring timeout CANCELs a ringing call; with no provisional at all, Timer B ends the attempt;
- 401/407 is answered once with digest credentials (CSeq + 1, new branch); a second is `failed`;
- a 2xx after our CANCEL is ACKed, then BYEd, and the attempt counts as `unreachable`;
- every retransmitted 2xx is ACKed again.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from . import auth
from .identity import Caller, asserted, from_addr, request_user
from .message import Headers, Request, Response, cseq, reason_q850, tag, uri_of
from .outcome import Outcome, final_outcome
from .sdp import Media, parse_answer
from .transaction import (
    InviteClientTransaction,
    NonInviteClientTransaction,
    ResponseReceived,
    Terminated,
    TimedOut,
    Transmit,
)

USER_AGENT = "telgate"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER"


@dataclass(frozen=True)
class UacConfig:
    local_host: str
    local_port: int
    pbx: str  # host:port of the outbound proxy / PBX
    transport: str = "UDP"
    from_user: str = "telgate"
    from_display: str | None = None
    username: str | None = None
    password: str | None = None
    t1: float = 0.5  # RFC 3261 T1 (RTT estimate): Timer A starts at T1, Timers B and F are 64 x T1
    dial_format: str = "e164"  # how the Request-URI user writes the number (sip/numbers.py)
    dial_prefix: str = ""
    user_phone: bool = False  # `;user=phone` on the Request-URI and To (and on a caller ID number)
    assert_identity: bool = False  # P-Asserted-Identity (RFC 3325) on every INVITE
    tls_scheme: str = "sips"  # over TLS: sips: URIs (RFC 5630), or "sip" (sip:...;transport=tls) for PBXs without sips:

    @property
    def reliable(self) -> bool:
        return self.transport.upper() != "UDP"

    @property
    def domain(self) -> str:
        return self.pbx.split(":")[0]

    @property
    def scheme(self) -> str:
        """`sips` over TLS (RFC 3261 §26.2, RFC 5630): the Request-URI, To and Contact say TLS end to end."""
        return "sips" if self.transport.upper() == "TLS" and self.tls_scheme == "sips" else "sip"

    def uri(self, user: str | None, host: str) -> str:
        """A URI of the PBX side (Request-URI, To): sips: over TLS, or sip:...;transport=tls when asked."""
        where = f"{user}@{host}" if user else host
        plain_tls = self.transport.upper() == "TLS" and self.scheme == "sip"
        return f"{self.scheme}:{where}{';transport=tls' if plain_tls else ''}"

    def contact(self, user: str) -> str:
        """Our Contact: a sips: URI over TLS (RFC 5630 §3.1.1: no `transport=tls`), else sip: with the transport."""
        where = f"{user}@{self.local_host}:{self.local_port}"
        return f"<sips:{where}>" if self.scheme == "sips" else f"<sip:{where};transport={self.transport.lower()}>"

    def via(self, branch_token: str) -> str:
        """Our Via: this address, a new RFC 3261 branch, and rport (RFC 3581) for NAT; over TLS also `alias`
        (RFC 5923): the PBX sends its requests back on our connection (telgate has no TLS listener)."""
        alias = ";alias" if self.transport.upper() == "TLS" else ""
        return (
            f"SIP/2.0/{self.transport.upper()} {self.local_host}:{self.local_port};branch=z9hG4bK{branch_token};rport"
            f"{alias}"
        )


# -- what a call tells its owner ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    message: Request | Response
    retransmission: bool = False  # sent again by a transaction timer (counted, not new)


@dataclass(frozen=True, slots=True)
class Ringing:
    status: int
    reason: str
    first: bool


@dataclass(frozen=True, slots=True)
class Answered:
    status: int
    media: Media | None = None  # where the far end wants audio (from the SDP answer)


@dataclass(frozen=True, slots=True)
class Transferred:
    """The outcome of our REFER: the REFER's own failure, or the final line of the NOTIFY sipfrag."""

    ok: bool
    status: int | None
    reason: str


class EndKind(StrEnum):
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    INVALID_NUMBER = "invalid_number"
    FAILED = "failed"
    LOCAL_HANGUP = "local_hangup"
    REMOTE_HANGUP = "remote_hangup"


@dataclass(frozen=True, slots=True)
class Ended:
    kind: EndKind
    status: int | None = None
    reason: str | None = None
    q850: int | None = None
    duration_s: float | None = None
    answered: bool = False


CallEvent = Send | Ringing | Answered | Transferred | Ended


class Phase(StrEnum):
    INVITING = "inviting"
    EARLY = "early"
    CONFIRMED = "confirmed"
    CLOSING = "closing"
    ENDED = "ended"


def _token() -> str:
    return secrets.token_hex(8)


@dataclass
class Call:
    cfg: UacConfig
    number: str
    call_id: str
    ring_timeout_s: float
    sdp: bytes = b""
    token: Callable[[], str] = _token
    caller: Caller | None = None  # the caller ID the callee sees (None: sip.from_user)
    phase: Phase = Phase.INVITING
    local_tag: str = field(default="")
    remote_tag: str | None = None
    remote_target: str | None = None
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    answered_at: float | None = None
    closed_at: float | None = None
    started_at: float = 0.0
    cancel_wanted: bool = False
    canceled: bool = False
    ring_timed_out: bool = False
    authenticated: bool = False
    ringing_seen: bool = False
    _ict: InviteClientTransaction | None = None
    _invite: Request | None = None
    _cancel: NonInviteClientTransaction | None = None
    _bye: NonInviteClientTransaction | None = None
    _refer: NonInviteClientTransaction | None = None
    transfer_state: str | None = None  # None, "pending", "accepted", "done"
    _ring_at: float | None = None
    _ack: Request | None = None
    _end: Ended | None = None
    _out: list[CallEvent] = field(default_factory=list)

    # -- building requests ----------------------------------------------------------------------
    @property
    def target_uri(self) -> str:
        cfg = self.cfg  # the trunk's dial string, under the transport's scheme (sips: over TLS)
        user = request_user(self.number, cfg.dial_format, cfg.dial_prefix)
        return cfg.uri(user, cfg.pbx) + (";user=phone" if cfg.user_phone else "")

    def _from(self) -> str:
        cfg = self.cfg
        addr = from_addr(self.caller, cfg.from_user, cfg.from_display, cfg.domain, cfg.dial_format, cfg.user_phone)
        return f"{addr};tag={self.local_tag}"

    def _contact(self) -> str:
        return self.cfg.contact(self.cfg.from_user)

    def _invite_request(self, extra: Headers | None = None) -> Request:
        h = (
            Headers()
            .with_("Via", self.cfg.via(self.token()))
            .with_("Max-Forwards", "70")
            .with_("From", self._from())
            .with_("To", f"<{self.target_uri}>")
            .with_("Call-ID", self.call_id)
            .with_("CSeq", f"{self.local_cseq} INVITE")
            .with_("Contact", self._contact())
            .with_("Allow", ALLOW)
            .with_("User-Agent", USER_AGENT)
        )
        cfg = self.cfg
        if cfg.assert_identity:
            identity = asserted(
                self.caller, cfg.from_user, cfg.from_display, cfg.domain, cfg.dial_format, cfg.user_phone
            )
            h = h.with_("P-Asserted-Identity", identity)
        if self.caller is not None and self.caller.withheld:
            h = h.with_("Privacy", "id")
        for n, v in extra.items if extra else ():
            h = h.with_(n, v)
        if self.sdp:
            h = h.with_("Content-Type", "application/sdp")
        return Request("INVITE", self.target_uri, h, self.sdp)

    def _in_dialog(self, method: str, number: int) -> Request:
        h = Headers().with_("Via", self.cfg.via(self.token())).with_("Max-Forwards", "70")
        for route in self.route_set:
            h = h.with_("Route", route)
        h = (
            h.with_("From", self._from())
            .with_("To", f"<{self.target_uri}>;tag={self.remote_tag}")
            .with_("Call-ID", self.call_id)
            .with_("CSeq", f"{number} {method}")
            .with_("User-Agent", USER_AGENT)
        )
        return Request(method, self.remote_target or self.target_uri, h)

    def _cancel_request(self) -> Request:
        assert self._invite is not None
        ih = self._invite.headers
        h = Headers().with_("Via", ih.get_all("via")[0])
        for route in ih.get_all("route"):
            h = h.with_("Route", route)
        h = (
            h.with_("Max-Forwards", "70")
            .with_("From", ih.get("from") or "")
            .with_("To", ih.get("to") or "")
            .with_("Call-ID", self.call_id)
            .with_("CSeq", f"{cseq(self._invite)[0]} CANCEL")
        )
        return Request("CANCEL", self._invite.uri, h)

    # -- driving it -----------------------------------------------------------------------------
    def start(self, now: float) -> list[CallEvent]:
        self.local_tag = self.local_tag or self.token()
        self.started_at = now
        self._ring_at = now + self.ring_timeout_s
        self._send_invite(self._invite_request(), now)
        return self._drain()

    def _send_invite(self, invite: Request, now: float) -> None:
        self._invite = invite
        self._ict = InviteClientTransaction(invite, self.cfg.reliable, now, self.cfg.t1)
        self._relay(self._ict.events())

    def _relay(self, events: Sequence[object]) -> None:
        for e in events:
            if isinstance(e, Transmit):
                self._out.append(Send(e.message, e.retransmission))

    def _drain(self) -> list[CallEvent]:
        out, self._out = self._out, []
        return out

    def _finish(self, end: Ended) -> None:
        if self._end is None:
            self._end = end
            self.phase = Phase.ENDED
            self._out.append(end)

    @property
    def ended(self) -> bool:
        return self._end is not None

    def get_timer(self) -> float | None:
        times = [
            t
            for t in (
                self._ict.get_timer() if self._ict else None,
                self._cancel.get_timer() if self._cancel else None,
                self._bye.get_timer() if self._bye else None,
                self._refer.get_timer() if self._refer else None,
                self._ring_at if self.phase in (Phase.INVITING, Phase.EARLY) else None,
            )
            if t is not None
        ]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[CallEvent]:
        if self._ring_at is not None and now >= self._ring_at and self.phase in (Phase.INVITING, Phase.EARLY):
            self._ring_at = None
            self.ring_timed_out = True
            if self.phase is Phase.EARLY:
                self._send_cancel(now)
        if self._ict is not None:
            for e in self._ict.handle_timer(now):
                if isinstance(e, Transmit):
                    self._out.append(Send(e.message, e.retransmission))
                elif isinstance(e, TimedOut):
                    self._finish(Ended(EndKind.FAILED, None, "no response (Timer B)"))
        if self._cancel is not None:
            self._relay(self._cancel.handle_timer(now))
        if self._refer is not None:
            for e in self._refer.handle_timer(now):
                if isinstance(e, Transmit):
                    self._out.append(Send(e.message, e.retransmission))
                elif isinstance(e, TimedOut) and self.transfer_state == "pending":
                    self._transferred(False, None, "no response to REFER (Timer F)")
        if self._bye is not None:
            for e in self._bye.handle_timer(now):
                if isinstance(e, Transmit):
                    self._out.append(Send(e.message, e.retransmission))
                elif isinstance(e, TimedOut | Terminated) and self.phase is Phase.CLOSING:
                    self._finish(Ended(EndKind.LOCAL_HANGUP, None, None, None, self._duration(now), True))
        return self._drain()

    def _duration(self, now: float) -> float | None:
        """Talk time: from the 2xx to our BYE, or to the far end's BYE."""
        end = self.closed_at if self.closed_at is not None else now
        return None if self.answered_at is None else round(end - self.answered_at, 3)

    def cancel(self, now: float) -> list[CallEvent]:
        """Admin cancel: CANCEL a ringing call now, or as soon as it rings; hang up an answered one."""
        if self.phase is Phase.EARLY:
            self._send_cancel(now)
        elif self.phase is Phase.INVITING:
            self.cancel_wanted = True
        elif self.phase is Phase.CONFIRMED:
            self._hangup(now)
        return self._drain()

    def _send_cancel(self, now: float) -> None:
        if self.canceled:
            return
        self.canceled = True
        self._cancel = NonInviteClientTransaction(self._cancel_request(), self.cfg.reliable, now, self.cfg.t1)
        self._relay(self._cancel.events())

    def hangup(self, now: float) -> list[CallEvent]:
        if self.phase in (Phase.INVITING, Phase.EARLY):
            return self.cancel(now)
        self._hangup(now)
        return self._drain()

    def transport_error(self, why: str) -> list[CallEvent]:
        """The INVITE could not be handed to the transport (e.g. TCP connection refused): `failed` now
        (SPEC §6.1), not after Timer B — a reliable transport does not retransmit."""
        if self.phase is Phase.INVITING and not self.ringing_seen:
            self._ict = None
            self._finish(Ended(EndKind.FAILED, None, f"transport error: {why}"))
        return self._drain()

    def transfer(self, target: str, now: float) -> list[CallEvent]:
        """Blind transfer (RFC 3515, RFC 5589 §6): REFER the answered party to `target`, then follow the
        NOTIFY sipfrag to its final line. The owner hangs up once the transfer is decided."""
        if self.phase is Phase.CONFIRMED and self.transfer_state is None:
            self.local_cseq += 1
            refer = self._in_dialog("REFER", self.local_cseq)
            h = (
                refer.headers.with_("Refer-To", f"<{target}>")
                .with_("Referred-By", f"<sip:{self.cfg.from_user}@{self.cfg.domain}>")
                .with_("Contact", self._contact())
            )
            self._refer = NonInviteClientTransaction(
                Request("REFER", refer.uri, h), self.cfg.reliable, now, self.cfg.t1
            )
            self.transfer_state = "pending"
            self._relay(self._refer.events())
        return self._drain()

    def _transferred(self, ok: bool, status: int | None, reason: str) -> None:
        if self.transfer_state in ("pending", "accepted"):
            self.transfer_state = "done"
            self._out.append(Transferred(ok, status, reason))

    def _hangup(self, now: float) -> None:
        if self.phase is Phase.CONFIRMED:
            self.local_cseq += 1
            self.closed_at = now
            self._bye = NonInviteClientTransaction(
                self._in_dialog("BYE", self.local_cseq), self.cfg.reliable, now, self.cfg.t1
            )
            self._relay(self._bye.events())
            self.phase = Phase.CLOSING

    # -- messages in ----------------------------------------------------------------------------
    def receive(self, message: Request | Response, now: float) -> list[CallEvent]:
        if isinstance(message, Response):
            self._on_response(message, now)
        else:
            self._on_request(message, now)
        return self._drain()

    def _on_response(self, resp: Response, now: float) -> None:
        number, method = cseq(resp)
        if method == "INVITE" and self._ict is not None and self._invite is not None:
            if number != cseq(self._invite)[0]:
                if 200 <= resp.status < 300:
                    self._ack_2xx(resp)  # a late 2xx to the challenged INVITE: ACK it too
                return
            for e in self._ict.receive(resp, now):
                if isinstance(e, Transmit):
                    self._out.append(Send(e.message, e.retransmission))
                elif isinstance(e, ResponseReceived):
                    self._invite_response(e.response, e.retransmission, now)
        elif method == "CANCEL" and self._cancel is not None:
            self._cancel.receive(resp, now)
        elif method == "REFER" and self._refer is not None:
            for e in self._refer.receive(resp, now):
                if isinstance(e, ResponseReceived) and e.response.status >= 200:
                    if e.response.status < 300:
                        self.transfer_state = "accepted" if self.transfer_state == "pending" else self.transfer_state
                    else:
                        self._transferred(False, e.response.status, f"REFER refused: {e.response.reason}")
        elif method == "BYE" and self._bye is not None:
            for e in self._bye.receive(resp, now):
                if isinstance(e, ResponseReceived) and e.response.status >= 200:
                    self._finish(
                        Ended(
                            EndKind.LOCAL_HANGUP, e.response.status, e.response.reason, None, self._duration(now), True
                        )
                    )

    def _invite_response(self, resp: Response, retransmission: bool, now: float) -> None:
        code = resp.status
        if code < 200:
            if code == 100:
                return
            first = not self.ringing_seen
            self.ringing_seen = True
            if self.phase is Phase.INVITING:
                self.phase = Phase.EARLY
            self._out.append(Ringing(code, resp.reason, first))
            if self.cancel_wanted or self.ring_timed_out:
                self._send_cancel(now)
            return
        if code < 300:
            self._ack_2xx(resp)
            if retransmission or self.phase in (Phase.CONFIRMED, Phase.CLOSING, Phase.ENDED):
                return
            self.remote_tag = tag(resp.headers.get("to"))
            contact = resp.headers.get_all("contact")
            self.remote_target = uri_of(contact[0]) if contact else self.target_uri
            self.route_set = list(reversed(resp.headers.get_all("record-route")))
            self.answered_at = now
            self.phase = Phase.CONFIRMED
            if self.canceled or self.cancel_wanted:  # answered across our CANCEL: ACK, then BYE
                self._hangup(now)
                self._finish(Ended(EndKind.UNREACHABLE, code, "answered after CANCEL", None, 0.0, False))
                return
            self._out.append(Answered(code, parse_answer(resp.body)))
            return
        if code in (401, 407) and not self.authenticated and self.cfg.username and self.cfg.password:
            header = "www-authenticate" if code == 401 else "proxy-authenticate"
            try:
                challenge = auth.best(resp.headers.get_all(header) or [resp.headers.get(header) or ""])
            except auth.AuthError as exc:
                self._finish(Ended(EndKind.FAILED, code, f"{resp.reason} ({exc})"))
                return
            self.authenticated = True
            self.local_cseq += 1
            credentials = auth.response(challenge, self.cfg.username, self.cfg.password, "INVITE", self.target_uri)
            name = "Authorization" if code == 401 else "Proxy-Authorization"
            invite = self._invite_request(Headers().with_(name, credentials))
            self._send_invite(invite, now)
            return
        q850 = reason_q850(resp)
        outcome = final_outcome(code, q850)
        self._finish(Ended(EndKind(outcome.value), code, resp.reason, q850))

    def _ack_2xx(self, resp: Response, send: bool = True) -> None:
        """The ACK of a 2xx is a request of its own (RFC 3261 §13.2.2.4), sent for every 2xx received."""
        if self._ack is None or self.remote_tag is None:
            remote_tag = tag(resp.headers.get("to"))
            contact = resp.headers.get_all("contact")
            target = uri_of(contact[0]) if contact else self.target_uri
            routes = list(reversed(resp.headers.get_all("record-route")))
            saved = (self.remote_tag, self.remote_target, self.route_set)
            self.remote_tag, self.remote_target, self.route_set = remote_tag, target, routes
            number = cseq(resp)[0]
            self._ack = self._in_dialog("ACK", number)
            self.remote_tag, self.remote_target, self.route_set = saved
        if send:
            self._out.append(Send(self._ack))

    def _on_request(self, req: Request, now: float) -> None:
        if req.method == "ACK":
            return
        if req.method == "BYE":
            self._out.append(Send(respond(req, 200, "OK")))
            q850 = reason_q850(req)
            self._finish(
                Ended(EndKind.REMOTE_HANGUP, None, None, q850, self._duration(now), self.answered_at is not None)
            )
            return
        if req.method == "NOTIFY":
            self._out.append(Send(respond(req, 200, "OK")))
            event = (req.headers.get("event") or "").split(";")[0].strip().lower()
            if event == "refer":
                line = sipfrag_status(req.body)
                if line is not None and line[0] >= 200:
                    self._transferred(line[0] < 300, line[0], line[1])
            return
        if req.method in ("OPTIONS", "INFO", "UPDATE"):
            self._out.append(Send(respond(req, 200, "OK")))
            return
        self._out.append(Send(respond(req, 501, "Not Implemented")))


def sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status line of a message/sipfrag body (RFC 3420), e.g. `SIP/2.0 200 OK` → (200, "OK")."""
    first = body.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
    parts = first.split(" ", 2)
    if len(parts) < 2 or parts[0].upper() != "SIP/2.0" or not parts[1].isdigit() or len(parts[1]) != 3:
        return None
    return int(parts[1]), parts[2] if len(parts) > 2 else ""


def respond(req: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """A response to `req` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID, CSeq copied."""
    h = Headers()
    for via in req.headers.get_all("via"):
        h = h.with_("Via", via)
    to = req.headers.get("to") or ""
    if to_tag and tag(to) is None:
        to = f"{to};tag={to_tag}"
    h = (
        h.with_("From", req.headers.get("from") or "")
        .with_("To", to)
        .with_("Call-ID", req.headers.get("call-id") or "")
        .with_("CSeq", req.headers.get("cseq") or "")
        .with_("User-Agent", USER_AGENT)
    )
    if status == 405 or status == 501:
        h = h.with_("Allow", ALLOW)
    return Response(status, reason, h)


__all__ = [
    "Answered",
    "Call",
    "CallEvent",
    "EndKind",
    "Ended",
    "Media",
    "Outcome",
    "Ringing",
    "Send",
    "Transferred",
    "UacConfig",
    "respond",
]
