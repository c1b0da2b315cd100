"""One outbound call as a UAC (RFC 3261 §12 to §15, RFC 4028), sans-IO: messages and `now` in, events out.

It owns the INVITE transaction (and the new INVITE after a 401/407, a 301/302 or a 422), the CANCEL,
the dialog, the ACK of every 2xx, the session refreshes and the BYE. Every request goes to the outbound
proxy (the PBX): in-dialog requests carry the dialog's route set and remote target, so a Record-Routing
proxy such as Kamailio sees them.

`Call` runs the pieces, each in a module named for it:
- `sip.config`: the trunk's settings (`UacConfig`) and the URIs, Contact and Via built from them;
- `sip.call_events`: what a call tells its owner (`Send`, `Ringing`, `Answered`, ..., `Ended`);
- `sip.call_table`: the phase table, with its rules stated at the top, and `IllegalTransition`;
- `sip.call_classify`: what arrives, named as one event of the table (the only place reading codes);
- `sip.requests` / `sip.responses`: the messages we send, built in one place;
- `sip.session_timer`: RFC 4028's Session-Expires and Min-SE.
This module keeps the call itself: the commands, the dispatch through the table, the actions (`Do.X` runs
`Call._x`), the call's timers, and the requests of its dialog. The public names of those modules stay
importable from here.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from . import auth, transitions
from .call_classify import Role, best_contact, classify_request, classify_response, classify_timeout, sipfrag_status
from .call_events import Answered, CallEvent, DtmfPressed, Ended, EndKind, Redirected, Ringing, Send, Transferred
from .call_table import TABLE, TIMER_EVENT, TIMER_PHASES, Do, Ev, IllegalTransition, Phase, Timer
from .config import ALLOW, USER_AGENT, UacConfig
from .dtmf import InfoDigit
from .identity import Caller, asserted, from_addr, request_user
from .message import Request, Response, cseq, reason_q850, tag, uri_of
from .numbers import dial_string, uri_user
from .outcome import Outcome, final_outcome
from .requests import authorization, build, challenge, in_transaction, tagged
from .responses import respond
from .sdp import Media, parse_answer
from .session_timer import DEFAULT_MIN_SE, Session, min_se_asked, session_expires
from .transaction import InviteClientTransaction, NonInviteClientTransaction, ResponseReceived, TimedOut, Transmit
from .uri import require_target, require_text, require_user


@dataclass(frozen=True, slots=True)
class Input:
    """What an action gets: the time, the message that caused the event (if any), a reason."""

    now: float
    message: Request | Response | None = None
    why: str | None = None
    target: str | None = None  # the transfer target
    dtmf: InfoDigit | None = None  # the key an INFO carried


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
    authenticated: bool = False  # credentials were sent to the current target
    ringing_seen: bool = False
    redirect: Redirected | None = None  # the 301/302 followed
    tried: list[str] = field(default_factory=list)  # Request-URIs this call sent an INVITE to
    min_se: int | None = None  # the Min-SE a 422 asked for
    session: Session | None = None
    end_reason: str | None = None  # why we hang up, when it is not the owner's wish (session timers)
    end_status: int | None = None
    peer_allows_update: bool = False  # the 2xx's Allow lists UPDATE: refresh with it
    transfer_state: str | None = None  # None, "pending", "accepted", "done"
    _invite: Request | None = None
    _challenge: tuple[auth.Challenge, str] | None = None  # (challenge, header name) for the current target
    _txs: dict[tuple[int, str], tuple[Role, InviteClientTransaction | NonInviteClientTransaction]] = field(
        default_factory=dict
    )
    _due: dict[Timer, float] = field(default_factory=dict)
    _acks: dict[int, Request] = field(default_factory=dict)  # CSeq -> the ACK of its 2xx
    _end: Ended | None = None
    _out: list[CallEvent] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Refuse (`HeaderValueError`) a number or caller ID that cannot be written into the INVITE, before
        anything is sent or kept."""
        cfg = self.cfg
        user = request_user(self.number, cfg.dial_format, cfg.dial_prefix)
        if user:  # none: the PBX itself is the target (`cfg.uri` writes no user part)
            require_user("number", user)
        if self.caller is not None:
            if self.caller.name is not None:
                require_text("caller name", self.caller.name)
            if self.caller.number:
                require_user("caller number", uri_user(dial_string(self.caller.number, cfg.dial_format)))

    @property
    def invite_uri(self) -> str:
        """Where the current INVITE goes: the number at the PBX, or the Contact of the redirect followed."""
        return self.redirect.contact if self.redirect is not None else self.target_uri

    # -- building requests ----------------------------------------------------------------------
    @property
    def target_uri(self) -> str:
        cfg = self.cfg  # the trunk's dial string, under the transport's scheme (sips: over TLS)
        user = request_user(self.number, cfg.dial_format, cfg.dial_prefix)
        return cfg.uri(user, cfg.pbx) + (";user=phone" if cfg.user_phone else "")

    def _from(self) -> str:
        cfg = self.cfg
        addr = from_addr(self.caller, cfg.from_user, cfg.from_display, cfg.domain, cfg.dial_format, cfg.user_phone)
        return tagged(addr, self.local_tag)

    def _contact(self) -> str:
        return self.cfg.contact(self.cfg.from_user)

    def _invite_request(self, extra: Sequence[tuple[str, str]] = ()) -> Request:
        cfg = self.cfg
        headers = [("Contact", self._contact()), ("Allow", ALLOW), ("User-Agent", USER_AGENT)]
        if cfg.assert_identity:
            identity = asserted(
                self.caller, cfg.from_user, cfg.from_display, cfg.domain, cfg.dial_format, cfg.user_phone
            )
            headers.append(("P-Asserted-Identity", identity))
        if self.caller is not None and self.caller.withheld:
            headers.append(("Privacy", "id"))
        return build(
            "INVITE",
            self.invite_uri,
            via=cfg.via(self.token()),
            from_=self._from(),
            to=f"<{self.target_uri}>",
            call_id=self.call_id,
            number=self.local_cseq,
            headers=[*headers, *extra],
            body=self.sdp,
        )

    def _in_dialog(
        self, method: str, number: int, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> Request:
        """A request in the dialog: to its remote target, through its route set, with its tags."""
        return build(
            method,
            self.remote_target or self.target_uri,
            via=self.cfg.via(self.token()),
            route=self.route_set,
            from_=self._from(),
            to=tagged(f"<{self.target_uri}>", self.remote_tag),
            call_id=self.call_id,
            number=number,
            headers=[("User-Agent", USER_AGENT), *headers],
            body=body,
        )

    # -- driving it: the owner's commands -------------------------------------------------------
    def start(self, now: float) -> list[CallEvent]:
        self.local_tag = self.local_tag or self.token()
        self.started_at = now
        self._due[Timer.RING] = now + self.ring_timeout_s
        self._send_invite(now)
        return self._drain()

    def cancel(self, now: float) -> list[CallEvent]:
        """Admin cancel: CANCEL a ringing call now, or as soon as it rings; hang up an answered one."""
        return self._run(Ev.CANCEL, Input(now))

    def hangup(self, now: float) -> list[CallEvent]:
        return self._run(Ev.HANGUP, Input(now))

    def transport_error(self, why: str) -> list[CallEvent]:
        """The INVITE could not be handed to the transport (e.g. TCP connection refused): `failed` now
        (SPEC §6.1), not after Timer B — a reliable transport does not retransmit."""
        return self._run(Ev.TRANSPORT_ERROR, Input(self.started_at, why=f"transport error: {why}"))

    def transfer(self, target: str, now: float) -> list[CallEvent]:
        """Blind transfer (RFC 3515, RFC 5589 §6): REFER the answered party to `target`, then follow the
        NOTIFY sipfrag to its final line. The owner hangs up once the transfer is decided. A target that is
        not a SIP or tel URI (`sip.uri.check_target`) raises `HeaderValueError`, the call unchanged."""
        require_target(target)
        event = Ev.TRANSFER if self.transfer_state is None else Ev.TRANSFER_AGAIN
        return self._run(event, Input(now, target=target))

    @property
    def ended(self) -> bool:
        return self._end is not None

    # -- timers: one mechanism ------------------------------------------------------------------
    def get_timer(self) -> float | None:
        times = list(self._due.values())
        times += [t for _, tx in self._txs.values() if (t := tx.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[CallEvent]:
        for name, due in sorted(self._due.items(), key=lambda item: item[1]):
            if due <= now and self._due.get(name) == due:
                del self._due[name]
                self._dispatch(TIMER_EVENT[name], Input(now, why=self._timer_why(name)))
        for key, (role, tx) in list(self._txs.items()):
            at = tx.get_timer()
            if at is not None and at <= now and key in self._txs:
                self._relay(key, role, tx.handle_timer(now), now)
        return self._drain()

    def _arm(self, timer: Timer, at: float) -> None:
        self._due[timer] = at

    # -- the table ------------------------------------------------------------------------------
    def _run(self, event: Ev, x: Input) -> list[CallEvent]:
        self._dispatch(event, x)
        return self._drain()

    def _dispatch(self, event: Ev, x: Input) -> None:
        illegal = partial(IllegalTransition, self.phase, event, self.call_id)
        self.phase, actions = transitions.step(TABLE, self.phase, event, self._due, TIMER_PHASES, illegal)
        for action in actions:
            getattr(self, f"_{action.value}")(x)

    def _drain(self) -> list[CallEvent]:
        out, self._out = self._out, []
        return out

    # -- messages in: classified, then run through the table ------------------------------------
    def receive(self, message: Request | Response, now: float) -> list[CallEvent]:
        if isinstance(message, Response):
            number, method = cseq(message)
            entry = self._txs.get((number, method))
            if entry is not None:
                self._relay((number, method), entry[0], entry[1].receive(message, now), now)
            elif method == "INVITE" and 200 <= message.status < 300:
                self._dispatch(Ev.ANSWER_AGAIN, Input(now, message))  # its transaction is gone: ACK it anyway
        else:
            event, dtmf, why = classify_request(message)
            self._dispatch(event, Input(now, message, why, dtmf=dtmf))
        return self._drain()

    def _relay(self, key: tuple[int, str], role: Role, events: Sequence[object], now: float) -> None:
        """A transaction's events: its sends go out, its responses and timeouts become call events."""
        for e in events:
            if isinstance(e, Transmit):
                self._out.append(Send(e.message, e.retransmission))
            elif isinstance(e, ResponseReceived):
                found = classify_response(self, role, e.response, e.retransmission)
                if found is not None:
                    self._dispatch(found[0], Input(now, e.response, found[1]))
            elif isinstance(e, TimedOut):
                self._txs.pop(key, None)
                timed_out = classify_timeout(role, e.timer)
                if timed_out is not None:
                    self._dispatch(timed_out[0], Input(now, None, timed_out[1]))
            else:  # Terminated: the transaction is done with its timers
                self._txs.pop(key, None)

    # -- helpers of the actions -----------------------------------------------------------------
    def _start(self, role: Role, request: Request, now: float) -> None:
        """A new client transaction for `request`, known by its CSeq; its first send goes out."""
        reliable, t1 = self.cfg.reliable, self.cfg.t1
        tx: InviteClientTransaction | NonInviteClientTransaction
        if request.method == "INVITE":
            tx = InviteClientTransaction(request, reliable, now, t1)
        else:
            tx = NonInviteClientTransaction(request, reliable, now, t1)
        key = cseq(request)
        self._txs[key] = (role, tx)
        self._relay(key, role, tx.events(), now)

    def _send_invite(self, now: float) -> None:
        """The call's INVITE (the first, or a new one after 401/407, 301/302, 422): the earlier one is spent."""
        for key, (role, tx) in list(self._txs.items()):
            if role is Role.INVITE:
                self._txs[key] = (Role.SPENT, tx)
        extra: list[tuple[str, str]] = []
        if self._challenge is not None:
            username, password = self.cfg.username, self.cfg.password
            if not username or not password:  # a challenge is taken up only with both (_classify): not an assert
                raise auth.AuthError("sip.username and sip.password are needed to answer a digest challenge")
            extra.append(authorization(self._challenge, username, password, "INVITE", self.invite_uri))
        extra += [("Supported", "timer"), ("Session-Expires", str(self._asked_interval()))]
        min_se = self.min_se if self.min_se is not None else min(self.cfg.session_expires_s, DEFAULT_MIN_SE)
        if min_se != DEFAULT_MIN_SE or self.min_se is not None:
            extra.append(("Min-SE", str(min_se)))
        self._invite = self._invite_request(extra)
        self.tried.append(self.invite_uri)
        self._start(Role.INVITE, self._invite, now)

    def _asked_interval(self) -> int:
        return max(self.cfg.session_expires_s, self.min_se or 0)

    def _finish(self, end: Ended) -> None:
        if self._end is None:
            self._end = end
            self._out.append(end)

    def _duration(self, now: float) -> float | None:
        """Talk time: from the 2xx to our BYE, or to the far end's BYE."""
        end = self.closed_at if self.closed_at is not None else now
        return None if self.answered_at is None else round(end - self.answered_at, 3)

    def _dialog_of(self, resp: Response) -> tuple[str | None, str, list[str]]:
        contact = resp.headers.get_all("contact")
        target = uri_of(contact[0]) if contact else self.invite_uri
        return tag(resp.headers.get("to")), target, list(reversed(resp.headers.get_all("record-route")))

    def _transferred(self, ok: bool, status: int | None, reason: str) -> None:
        if self.transfer_state in ("pending", "accepted"):
            self.transfer_state = "done"
            self._out.append(Transferred(ok, status, reason))

    def _set_session(self, session: Session | None, now: float) -> None:
        """Arm the session timer (RFC 4028 §7.2, §10): refresh at half the interval when it is ours to
        do; hang up min(32 s, interval / 3) before it expires unless a refresh succeeds first."""
        self.session = session
        self._due.pop(Timer.REFRESH, None)
        self._due.pop(Timer.EXPIRY, None)
        if session is None:
            return
        interval = max(session.interval, 2)
        if session.we_refresh:
            self._arm(Timer.REFRESH, now + interval / 2)
        self._arm(Timer.EXPIRY, now + interval - min(32.0, interval / 3))

    def _timer_why(self, timer: Timer) -> str | None:
        if timer is Timer.CANCEL_GIVE_UP:
            return "no final response to the INVITE 64 x T1 after our CANCEL (RFC 3261 §9.1)"
        if timer is not Timer.EXPIRY or self.session is None:
            return None
        who = "no refresh of ours was answered" if self.session.we_refresh else "the PBX did not refresh it"
        return f"session expired: {who} (Session-Expires {self.session.interval} s)"

    def _reply(self, req: Request, status: int, reason: str) -> None:
        self._out.append(Send(respond(req, status, reason)))

    # -- the actions (Do.X runs _x) ---------------------------------------------------------------
    def _ringing(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        first = not self.ringing_seen
        self.ringing_seen = True
        self._out.append(Ringing(x.message.status, x.message.reason, first))

    def _want_cancel(self, x: Input) -> None:
        self.cancel_wanted = True

    def _send_cancel(self, x: Input) -> None:
        if self.canceled:
            return
        self.canceled = True
        assert self._invite is not None
        self._start(Role.CANCEL, in_transaction(self._invite, "CANCEL"), x.now)
        self._arm(Timer.CANCEL_GIVE_UP, x.now + 64 * self.cfg.t1)

    def _ack_2xx(self, x: Input) -> None:
        """The ACK of a 2xx is a request of its own (RFC 3261 §13.2.2.4), sent for every 2xx received."""
        assert isinstance(x.message, Response)
        number = cseq(x.message)[0]
        ack = self._acks.get(number)
        if ack is None:
            saved = (self.remote_tag, self.remote_target, self.route_set)
            if self.remote_tag is None:  # not adopted yet: the dialog this 2xx makes
                self.remote_tag, self.remote_target, self.route_set = self._dialog_of(x.message)
            ack = self._acks[number] = self._in_dialog("ACK", number)
            self.remote_tag, self.remote_target, self.route_set = saved
        self._out.append(Send(ack))

    def _adopt_dialog(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        self.remote_tag, self.remote_target, self.route_set = self._dialog_of(x.message)
        self.peer_allows_update = "UPDATE" in {a.strip().upper() for a in x.message.headers.get_all("allow")}

    def _answered(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        self.answered_at = x.now
        self._out.append(Answered(x.message.status, parse_answer(x.message.body)))

    def _arm_session(self, x: Input) -> None:
        """From a 2xx to our INVITE or refresh: `refresher=uac` (or none) means us (§7.2)."""
        assert isinstance(x.message, Response)
        terms = session_expires(x.message.headers.get("session-expires"))
        if terms is None:
            self._set_session(None, x.now)
            return
        self._set_session(Session(terms[0], terms[1] != "uas", self.peer_allows_update), x.now)

    def _authenticate(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        self.authenticated = True
        self._challenge = challenge(x.message)
        self.local_cseq += 1
        self._send_invite(x.now)

    def _follow_redirect(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        contact = best_contact(x.message)
        assert contact is not None
        self.redirect = Redirected(x.message.status, contact)
        self._out.append(self.redirect)
        self.authenticated, self._challenge = False, None  # a new target challenges afresh
        self.local_cseq += 1
        self._send_invite(x.now)

    def _raise_min_se(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        self.min_se = min_se_asked(x.message, self._asked_interval())
        self.local_cseq += 1
        self._send_invite(x.now)

    def _end_outcome(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        q850 = reason_q850(x.message)
        outcome = final_outcome(x.message.status, q850)
        self._finish(Ended(EndKind(outcome.value), x.message.status, x.message.reason, q850))

    def _end_failed(self, x: Input) -> None:
        status = x.message.status if isinstance(x.message, Response) else None
        self._finish(Ended(EndKind.FAILED, status, x.why))

    def _end_canceled_answer(self, x: Input) -> None:
        assert isinstance(x.message, Response)
        self._finish(Ended(EndKind.UNREACHABLE, x.message.status, "answered after CANCEL", None, 0.0, False))

    def _end_unreachable(self, x: Input) -> None:
        self._finish(Ended(EndKind.UNREACHABLE, None, x.why))

    def _end_remote(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        answered = self.answered_at is not None
        self._finish(Ended(EndKind.REMOTE_HANGUP, None, None, reason_q850(x.message), self._duration(x.now), answered))

    def _end_local(self, x: Input) -> None:
        if self.end_reason is not None:
            status, reason = self.end_status, self.end_reason
        elif isinstance(x.message, Response):
            status, reason = x.message.status, x.message.reason
        else:
            status, reason = None, None
        self._finish(Ended(EndKind.LOCAL_HANGUP, status, reason, None, self._duration(x.now), True))

    def _note_end_reason(self, x: Input) -> None:
        self.end_status = x.message.status if isinstance(x.message, Response) else None
        self.end_reason = x.why

    def _forget_invite(self, x: Input) -> None:
        for key, (role, _tx) in list(self._txs.items()):
            if role is Role.INVITE:
                del self._txs[key]

    def _send_bye(self, x: Input) -> None:
        self.local_cseq += 1
        self.closed_at = x.now
        self._start(Role.BYE, self._in_dialog("BYE", self.local_cseq), x.now)

    def _send_refer(self, x: Input) -> None:
        assert x.target is not None
        self.local_cseq += 1
        headers = [
            ("Refer-To", f"<{x.target}>"),
            ("Referred-By", f"<sip:{self.cfg.from_user}@{self.cfg.domain}>"),
            ("Contact", self._contact()),
        ]
        self.transfer_state = "pending"
        self._start(Role.REFER, self._in_dialog("REFER", self.local_cseq, headers), x.now)

    def _refer_accepted(self, x: Input) -> None:
        if self.transfer_state == "pending":
            self.transfer_state = "accepted"

    def _transfer_failed(self, x: Input) -> None:
        status = x.message.status if isinstance(x.message, Response) else None
        self._transferred(False, status, x.why or "")

    def _note_ring_timeout(self, x: Input) -> None:
        self.ring_timed_out = True

    def _send_refresh(self, x: Input) -> None:
        """Our session refresh (RFC 4028 §7.4): UPDATE without a body when the PBX allows UPDATE, else a
        re-INVITE with the SDP we offered before (the same version: no change to the session)."""
        assert self.session is not None
        method = "UPDATE" if self.session.by_update else "INVITE"
        self.local_cseq += 1
        headers = [
            ("Contact", self._contact()),
            ("Allow", ALLOW),
            ("Supported", "timer"),
            ("Session-Expires", f"{self.session.interval};refresher=uac"),
        ]
        if self.min_se is not None:
            headers.append(("Min-SE", str(self.min_se)))
        body = self.sdp if method == "INVITE" else b""
        self._start(Role.REFRESH, self._in_dialog(method, self.local_cseq, headers, body), x.now)

    def _retry_refresh_later(self, x: Input) -> None:
        expiry = self._due.get(Timer.EXPIRY)
        if expiry is not None and expiry - x.now > 2.0:
            self._arm(Timer.REFRESH, x.now + (expiry - x.now) / 2)

    def _raise_interval(self, x: Input) -> None:
        assert isinstance(x.message, Response) and self.session is not None
        self.min_se = min_se_asked(x.message, self.session.interval)
        self.session = Session(max(self.session.interval, self.min_se), True, self.session.by_update)

    def _answer_ok(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        self._reply(x.message, 200, "OK")

    def _answer_501(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        self._reply(x.message, 501, "Not Implemented")

    def _answer_400(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        self._reply(x.message, 400, "Bad Request (unreadable DTMF body)")  # `x.why` says what was wrong

    def _dtmf_pressed(self, x: Input) -> None:
        assert x.dtmf is not None
        self._out.append(DtmfPressed(x.dtmf.digit, x.dtmf.duration_ms))

    def _answer_pending(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        self._reply(x.message, 491, "Request Pending")

    def _answer_gone(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        self._reply(x.message, 481, "Call/Transaction Does Not Exist")

    def _answer_refresh(self, x: Input) -> None:
        """The PBX's re-INVITE or UPDATE (RFC 4028 §9): 200 with our SDP (to an INVITE, or an UPDATE with
        an offer), the Session-Expires it asked with its refresher (`uac`, the PBX, when it named none),
        and the session timer armed again from now."""
        req = x.message
        assert isinstance(req, Request)
        terms = session_expires(req.headers.get("session-expires"))
        resp = respond(req, 200, "OK")
        h = resp.headers.with_("Contact", self._contact()).with_("Allow", ALLOW).with_("Supported", "timer")
        session = None
        if terms is not None:
            refresher = terms[1] or "uac"
            h = h.with_("Session-Expires", f"{terms[0]};refresher={refresher}").with_("Require", "timer")
            session = Session(terms[0], refresher == "uas", self.peer_allows_update)
        body = b""
        if (req.method == "INVITE" or req.body) and self.sdp:
            h, body = h.with_("Content-Type", "application/sdp"), self.sdp
        self._out.append(Send(Response(200, "OK", h, body)))
        contact = req.headers.get_all("contact")
        if contact:
            self.remote_target = uri_of(contact[0])  # a target refresh request (RFC 3261 §12.2.2)
        self._set_session(session, x.now)

    def _follow_sipfrag(self, x: Input) -> None:
        req = x.message
        assert isinstance(req, Request)
        event = (req.headers.get("event") or "").split(";")[0].strip().lower()
        if event == "refer":
            line = sipfrag_status(req.body)
            if line is not None and line[0] >= 200:
                self._transferred(line[0] < 300, line[0], line[1])


__all__ = [
    "ALLOW",
    "DEFAULT_MIN_SE",
    "TABLE",
    "TIMER_EVENT",
    "TIMER_PHASES",
    "USER_AGENT",
    "Answered",
    "Call",
    "CallEvent",
    "Do",
    "DtmfPressed",
    "EndKind",
    "Ended",
    "Ev",
    "IllegalTransition",
    "Input",
    "Media",
    "Outcome",
    "Phase",
    "Redirected",
    "Request",
    "Response",
    "Ringing",
    "Role",
    "Send",
    "Session",
    "Timer",
    "Transferred",
    "UacConfig",
    "best_contact",
    "respond",
    "session_expires",
    "sipfrag_status",
]
