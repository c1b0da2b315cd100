"""One outbound call as a UAC (RFC 3261 §12 to §15, RFC 4028), sans-IO: messages and `now` in, events out.

It owns the INVITE transaction (and the new INVITE after a 401/407, a 301/302 or a 422), the CANCEL,
the dialog, the ACK of every 2xx, the session refreshes and the BYE. Every request goes to the outbound
proxy (the PBX): in-dialog requests carry the dialog's route set and remote target, so a Record-Routing
proxy such as Kamailio sees them.

How it is built: what arrives (a response, a request, a timer, the owner's command) is first *classified*
into one `Ev` (the only place that looks at codes, headers and counters); then `TABLE[(phase, event)]`
says the next phase and the actions, in order. Actions send, arm timers and tell the owner; they never
change the phase. A (phase, event) that is not in the table raises `IllegalTransition` naming both: the
classifier produced something the rules below say cannot happen.

Rules, in the order SPEC §6.1 states them:
- CANCEL only after a provisional response (§9.1); a cancel asked for earlier waits for one;
- the ring timeout CANCELs a ringing call; with no provisional at all, Timer B ends the attempt;
- 401/407 is answered once with digest credentials (CSeq + 1, new branch); a second is `failed`;
- 301/302 is followed once to its Contact (the best q): a new INVITE (CSeq + 1, new branch, the same
  Call-ID, From and To as §8.1.3.4 recommends — it is the same attempt), the Request-URI the Contact,
  still sent to the PBX; a second redirect, or one to a URI already tried, is `failed`;
- every INVITE says `Supported: timer` and `Session-Expires` (RFC 4028 §7.1); a 422 is answered once
  with `Session-Expires` and `Min-SE` at least the 422's Min-SE; a second 422 is `failed`;
- once a cancel was asked for (or the ring timeout passed) no final response starts a new INVITE;
- a 2xx after our CANCEL is ACKed, then BYEd, and the attempt counts as `unreachable`; with no final
  response at all 64 x T1 after the CANCEL the INVITE is given up (§9.1), `unreachable` too;
- every retransmitted 2xx is ACKed again, a 2xx to an earlier INVITE of the call too;
- the 2xx's `Session-Expires` decides the session timer: `refresher=uac` (or none given) → we refresh
  at half the interval, by UPDATE when the PBX's Allow lists it, else by re-INVITE with the same SDP;
  `refresher=uas` → the PBX refreshes and we answer 200 with our SDP; either way, with no successful
  refresh the call is hung up min(32 s, interval / 3) before it expires (§10); no Session-Expires → no
  session timer;
- a refresh answered 408 or not at all ends the call with BYE, 481 ends it without (the dialog is gone
  at the far end), 422 raises the interval and refreshes again at once, anything else is tried again
  half way to the expiry; the end's `reason` says which;
- once our BYE is sent, or the call ended, what still arrives is answered or absorbed, never decided.

Timers: one mechanism. The call's own timers (`Timer`) live in one dict of deadlines, each allowed only in
the phases `TIMER_PHASES` gives it (a phase change drops the others); the transactions keep theirs.
`get_timer()` is the earliest of all; `handle_timer(now)` fires what is due, through the same table.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from . import auth, transitions
from .identity import Caller, asserted, from_addr, request_user
from .message import (
    Headers,
    HeaderValueError,
    Request,
    Response,
    checked,
    cseq,
    digits,
    params,
    reason_q850,
    tag,
    uri_of,
)
from .numbers import dial_string, uri_user
from .outcome import Outcome, final_outcome
from .requests import authorization, build, challenge, in_transaction, tagged
from .sdp import Media, parse_answer
from .transaction import (
    InviteClientTransaction,
    NonInviteClientTransaction,
    ResponseReceived,
    TimedOut,
    Transmit,
)
from .transitions import STAY, table
from .uri import require_target, require_text, require_user

USER_AGENT = "telgate"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER, UPDATE"
DEFAULT_MIN_SE = 90  # RFC 4028 §5: Min-SE when none is given, and the lowest a UAS may ask


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
    session_expires_s: int = 1800  # RFC 4028: the Session-Expires we ask for (§4 recommends 1800)

    def __post_init__(self) -> None:
        """What goes into every message is writable: `HeaderValueError` names the first value that is not."""
        require_user("sip.from_user", self.from_user)
        if self.from_display is not None:
            require_text("sip.from_display", self.from_display)
        for what, value in (("local host", self.local_host), ("sip.pbx", self.pbx), ("sip.transport", self.transport)):
            checked(what, value)
            if not value or " " in value or "\t" in value:
                raise HeaderValueError(what, f"empty or holds a space: {value[:40]!r}")

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
class Redirected:
    """A 301/302 followed: the attempt goes on at `contact` (evidence for every later event)."""

    status: int
    contact: str


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


CallEvent = Send | Ringing | Answered | Redirected | Transferred | Ended


class Phase(StrEnum):
    INVITING = "inviting"  # an INVITE out, no provisional response to it yet
    EARLY = "early"  # a provisional came: CANCEL is allowed
    CONFIRMED = "confirmed"  # answered and ACKed
    CLOSING = "closing"  # our BYE is out
    ENDED = "ended"  # the owner has been told `Ended`; transactions may linger for their timers


class Ev(StrEnum):
    """What happened, as the classifier names it."""

    # responses to the call's INVITE, Timer B, the transport
    PROVISIONAL = "provisional"  # 101-199
    PROVISIONAL_CANCEL_DUE = "provisional_cancel_due"  # ... and a cancel (or the ring timeout) is waiting for it
    ANSWER = "answer"  # the first 2xx
    ANSWER_AFTER_CANCEL = "answer_after_cancel"  # the first 2xx, but we CANCELled (or meant to)
    ANSWER_AGAIN = "answer_again"  # a retransmitted 2xx, or a 2xx to an earlier INVITE of this call
    CHALLENGE = "challenge"  # 401/407, credentials configured and not yet tried at this target
    CHALLENGE_UNUSABLE = "challenge_unusable"  # 401/407 whose challenge we cannot answer
    REDIRECT = "redirect"  # 301/302 to a new sip: URI, the first redirect
    REDIRECT_AGAIN = "redirect_again"  # a second 301/302
    REDIRECT_LOOP = "redirect_loop"  # 301/302 to a URI this call already tried
    REDIRECT_UNUSABLE = "redirect_unusable"  # 301/302 without a sip:/sips: Contact
    INTERVAL_TOO_SMALL = "interval_too_small"  # 422, the first
    INTERVAL_TOO_SMALL_AGAIN = "interval_too_small_again"  # 422, the second
    REFUSED = "refused"  # any other final (including a redirect/challenge/422 after a cancel)
    NO_RESPONSE = "no_response"  # Timer B
    TRANSPORT_ERROR = "transport_error"  # the INVITE could not be handed to the transport
    # the owner
    CANCEL = "cancel"
    HANGUP = "hangup"
    TRANSFER = "transfer"
    TRANSFER_AGAIN = "transfer_again"
    # the call's own timers
    RING_TIMEOUT = "ring_timeout"
    REFRESH_DUE = "refresh_due"
    SESSION_EXPIRING = "session_expiring"
    CANCEL_UNANSWERED = "cancel_unanswered"
    # requests from the far end
    BYE_RECEIVED = "bye_received"
    NOTIFY_RECEIVED = "notify_received"
    REINVITE_RECEIVED = "reinvite_received"
    UPDATE_RECEIVED = "update_received"
    QUERY_RECEIVED = "query_received"  # OPTIONS, INFO
    ACK_RECEIVED = "ack_received"
    UNKNOWN_RECEIVED = "unknown_received"
    # our in-dialog requests
    BYE_ANSWERED = "bye_answered"  # a final response, or Timer F
    REFER_ACCEPTED = "refer_accepted"
    REFER_FAILED = "refer_failed"  # a non-2xx final, or Timer F
    REFRESH_OK = "refresh_ok"
    REFRESH_OK_AGAIN = "refresh_ok_again"  # a retransmitted 2xx to our re-INVITE
    REFRESH_UPDATED = "refresh_updated"  # a 2xx to our UPDATE (no ACK)
    REFRESH_TIMED_OUT = "refresh_timed_out"  # 408, or no response (Timer B/F)
    REFRESH_NO_DIALOG = "refresh_no_dialog"  # 481
    REFRESH_TOO_SMALL = "refresh_too_small"  # 422
    REFRESH_REFUSED = "refresh_refused"  # any other final


class Do(StrEnum):
    """The actions; `Do.X` runs `Call._x`."""

    RINGING = "ringing"
    SEND_CANCEL = "send_cancel"
    WANT_CANCEL = "want_cancel"
    ACK_2XX = "ack_2xx"
    ADOPT_DIALOG = "adopt_dialog"
    ANSWERED = "answered"
    ARM_SESSION = "arm_session"
    AUTHENTICATE = "authenticate"
    FOLLOW_REDIRECT = "follow_redirect"
    RAISE_MIN_SE = "raise_min_se"
    END_OUTCOME = "end_outcome"
    END_FAILED = "end_failed"
    END_CANCELED_ANSWER = "end_canceled_answer"
    END_UNREACHABLE = "end_unreachable"
    END_REMOTE = "end_remote"
    END_LOCAL = "end_local"
    FORGET_INVITE = "forget_invite"
    SEND_BYE = "send_bye"
    SEND_REFER = "send_refer"
    REFER_ACCEPTED = "refer_accepted"
    TRANSFER_FAILED = "transfer_failed"
    NOTE_RING_TIMEOUT = "note_ring_timeout"
    NOTE_END_REASON = "note_end_reason"
    SEND_REFRESH = "send_refresh"
    RETRY_REFRESH_LATER = "retry_refresh_later"
    RAISE_INTERVAL = "raise_interval"
    ANSWER_OK = "answer_ok"
    ANSWER_501 = "answer_501"
    ANSWER_PENDING = "answer_pending"
    ANSWER_GONE = "answer_gone"
    ANSWER_REFRESH = "answer_refresh"
    FOLLOW_SIPFRAG = "follow_sipfrag"


class Timer(StrEnum):
    RING = "ring"  # the ring timeout (SPEC §6.1), from the first INVITE
    REFRESH = "refresh"  # we are the refresher: half the session interval after the last refresh
    EXPIRY = "expiry"  # no successful refresh: min(32 s, interval / 3) before the session expires
    CANCEL_GIVE_UP = "cancel_give_up"  # 64 x T1 after our CANCEL with no final to the INVITE (§9.1)


TIMER_EVENT = {
    Timer.RING: Ev.RING_TIMEOUT,
    Timer.REFRESH: Ev.REFRESH_DUE,
    Timer.EXPIRY: Ev.SESSION_EXPIRING,
    Timer.CANCEL_GIVE_UP: Ev.CANCEL_UNANSWERED,
}
TIMER_PHASES: dict[Timer, frozenset[Phase]] = {
    Timer.RING: frozenset({Phase.INVITING, Phase.EARLY}),
    Timer.REFRESH: frozenset({Phase.CONFIRMED}),
    Timer.EXPIRY: frozenset({Phase.CONFIRMED}),
    Timer.CANCEL_GIVE_UP: frozenset({Phase.EARLY}),
}

# -- the table -----------------------------------------------------------------------------------

INVITING, EARLY, CONFIRMED, CLOSING, ENDED = Phase.INVITING, Phase.EARLY, Phase.CONFIRMED, Phase.CLOSING, Phase.ENDED
BEFORE_ANSWER = (INVITING, EARLY)
ALL = (INVITING, EARLY, CONFIRMED, CLOSING, ENDED)
Row = tuple[tuple[Phase, ...], Ev, Phase | None, tuple[Do, ...]]

ROWS: list[Row] = [
    # the INVITE's responses
    (BEFORE_ANSWER, Ev.PROVISIONAL, EARLY, (Do.RINGING,)),
    (BEFORE_ANSWER, Ev.PROVISIONAL_CANCEL_DUE, EARLY, (Do.RINGING, Do.SEND_CANCEL)),
    (BEFORE_ANSWER, Ev.ANSWER, CONFIRMED, (Do.ACK_2XX, Do.ADOPT_DIALOG, Do.ANSWERED, Do.ARM_SESSION)),
    (BEFORE_ANSWER, Ev.ANSWER_AFTER_CANCEL, ENDED, (Do.ACK_2XX, Do.ADOPT_DIALOG, Do.SEND_BYE, Do.END_CANCELED_ANSWER)),
    (ALL, Ev.ANSWER_AGAIN, STAY, (Do.ACK_2XX,)),
    (BEFORE_ANSWER, Ev.CHALLENGE, INVITING, (Do.AUTHENTICATE,)),
    (BEFORE_ANSWER, Ev.REDIRECT, INVITING, (Do.FOLLOW_REDIRECT,)),
    (BEFORE_ANSWER, Ev.INTERVAL_TOO_SMALL, INVITING, (Do.RAISE_MIN_SE,)),
    (BEFORE_ANSWER, Ev.REFUSED, ENDED, (Do.END_OUTCOME,)),
    (BEFORE_ANSWER, Ev.CHALLENGE_UNUSABLE, ENDED, (Do.END_FAILED,)),
    (BEFORE_ANSWER, Ev.REDIRECT_AGAIN, ENDED, (Do.END_FAILED,)),
    (BEFORE_ANSWER, Ev.REDIRECT_LOOP, ENDED, (Do.END_FAILED,)),
    (BEFORE_ANSWER, Ev.REDIRECT_UNUSABLE, ENDED, (Do.END_FAILED,)),
    (BEFORE_ANSWER, Ev.INTERVAL_TOO_SMALL_AGAIN, ENDED, (Do.END_FAILED,)),
    ((INVITING,), Ev.NO_RESPONSE, ENDED, (Do.END_FAILED,)),
    ((INVITING,), Ev.TRANSPORT_ERROR, ENDED, (Do.FORGET_INVITE, Do.END_FAILED)),
    ((EARLY, CONFIRMED, CLOSING, ENDED), Ev.TRANSPORT_ERROR, STAY, ()),  # a ringing call is left to the ring timeout
    # ... after the far end BYEd an early dialog, the INVITE's transaction still answers: ACK, leave
    ((ENDED,), Ev.ANSWER, STAY, (Do.ACK_2XX, Do.ADOPT_DIALOG, Do.SEND_BYE)),
    ((ENDED,), Ev.ANSWER_AFTER_CANCEL, STAY, (Do.ACK_2XX, Do.ADOPT_DIALOG, Do.SEND_BYE)),
    *(
        ((ENDED,), ev, STAY, ())
        for ev in (
            Ev.PROVISIONAL,
            Ev.PROVISIONAL_CANCEL_DUE,
            Ev.CHALLENGE,
            Ev.CHALLENGE_UNUSABLE,
            Ev.REDIRECT,
            Ev.REDIRECT_AGAIN,
            Ev.REDIRECT_LOOP,
            Ev.REDIRECT_UNUSABLE,
            Ev.INTERVAL_TOO_SMALL,
            Ev.INTERVAL_TOO_SMALL_AGAIN,
            Ev.REFUSED,
            Ev.NO_RESPONSE,
        )
    ),
    # the owner
    ((INVITING,), Ev.CANCEL, STAY, (Do.WANT_CANCEL,)),
    ((EARLY,), Ev.CANCEL, STAY, (Do.SEND_CANCEL,)),
    ((CONFIRMED,), Ev.CANCEL, CLOSING, (Do.SEND_BYE,)),
    ((CLOSING, ENDED), Ev.CANCEL, STAY, ()),
    ((INVITING,), Ev.HANGUP, STAY, (Do.WANT_CANCEL,)),
    ((EARLY,), Ev.HANGUP, STAY, (Do.SEND_CANCEL,)),
    ((CONFIRMED,), Ev.HANGUP, CLOSING, (Do.SEND_BYE,)),
    ((CLOSING, ENDED), Ev.HANGUP, STAY, ()),
    ((CONFIRMED,), Ev.TRANSFER, STAY, (Do.SEND_REFER,)),
    ((INVITING, EARLY, CLOSING, ENDED), Ev.TRANSFER, STAY, ()),
    (ALL, Ev.TRANSFER_AGAIN, STAY, ()),  # one transfer per call
    # the call's timers
    ((INVITING,), Ev.RING_TIMEOUT, STAY, (Do.NOTE_RING_TIMEOUT,)),  # no provisional: left to Timer B
    ((EARLY,), Ev.RING_TIMEOUT, STAY, (Do.NOTE_RING_TIMEOUT, Do.SEND_CANCEL)),
    ((EARLY,), Ev.CANCEL_UNANSWERED, ENDED, (Do.FORGET_INVITE, Do.END_UNREACHABLE)),
    ((CONFIRMED,), Ev.REFRESH_DUE, STAY, (Do.SEND_REFRESH,)),
    ((CONFIRMED,), Ev.SESSION_EXPIRING, CLOSING, (Do.NOTE_END_REASON, Do.SEND_BYE)),
    # requests from the far end
    ((INVITING, EARLY, CONFIRMED, CLOSING), Ev.BYE_RECEIVED, ENDED, (Do.ANSWER_OK, Do.END_REMOTE)),
    ((ENDED,), Ev.BYE_RECEIVED, STAY, (Do.ANSWER_OK,)),
    ((INVITING, EARLY, CONFIRMED, CLOSING), Ev.NOTIFY_RECEIVED, STAY, (Do.ANSWER_OK, Do.FOLLOW_SIPFRAG)),
    ((ENDED,), Ev.NOTIFY_RECEIVED, STAY, (Do.ANSWER_OK,)),
    ((CONFIRMED,), Ev.REINVITE_RECEIVED, STAY, (Do.ANSWER_REFRESH,)),
    ((CONFIRMED,), Ev.UPDATE_RECEIVED, STAY, (Do.ANSWER_REFRESH,)),
    (BEFORE_ANSWER, Ev.REINVITE_RECEIVED, STAY, (Do.ANSWER_PENDING,)),
    (BEFORE_ANSWER, Ev.UPDATE_RECEIVED, STAY, (Do.ANSWER_OK,)),
    ((CLOSING, ENDED), Ev.REINVITE_RECEIVED, STAY, (Do.ANSWER_GONE,)),
    ((CLOSING, ENDED), Ev.UPDATE_RECEIVED, STAY, (Do.ANSWER_GONE,)),
    (ALL, Ev.QUERY_RECEIVED, STAY, (Do.ANSWER_OK,)),
    (ALL, Ev.UNKNOWN_RECEIVED, STAY, (Do.ANSWER_501,)),
    (ALL, Ev.ACK_RECEIVED, STAY, ()),
    # our in-dialog requests
    ((CLOSING,), Ev.BYE_ANSWERED, ENDED, (Do.END_LOCAL,)),
    ((ENDED,), Ev.BYE_ANSWERED, STAY, ()),
    ((CONFIRMED, CLOSING), Ev.REFER_ACCEPTED, STAY, (Do.REFER_ACCEPTED,)),
    ((CONFIRMED, CLOSING), Ev.REFER_FAILED, STAY, (Do.TRANSFER_FAILED,)),
    ((ENDED,), Ev.REFER_ACCEPTED, STAY, ()),
    ((ENDED,), Ev.REFER_FAILED, STAY, ()),
    ((CONFIRMED,), Ev.REFRESH_OK, STAY, (Do.ACK_2XX, Do.ARM_SESSION)),
    ((CONFIRMED,), Ev.REFRESH_UPDATED, STAY, (Do.ARM_SESSION,)),
    ((CLOSING, ENDED), Ev.REFRESH_UPDATED, STAY, ()),
    ((CLOSING, ENDED), Ev.REFRESH_OK, STAY, (Do.ACK_2XX,)),
    ((CONFIRMED, CLOSING, ENDED), Ev.REFRESH_OK_AGAIN, STAY, (Do.ACK_2XX,)),
    ((CONFIRMED,), Ev.REFRESH_TIMED_OUT, CLOSING, (Do.NOTE_END_REASON, Do.SEND_BYE)),
    ((CONFIRMED,), Ev.REFRESH_NO_DIALOG, ENDED, (Do.NOTE_END_REASON, Do.END_LOCAL)),
    ((CONFIRMED,), Ev.REFRESH_TOO_SMALL, STAY, (Do.RAISE_INTERVAL, Do.SEND_REFRESH)),
    ((CONFIRMED,), Ev.REFRESH_REFUSED, STAY, (Do.RETRY_REFRESH_LATER,)),
    *(
        ((CLOSING, ENDED), ev, STAY, ())
        for ev in (Ev.REFRESH_TIMED_OUT, Ev.REFRESH_NO_DIALOG, Ev.REFRESH_TOO_SMALL, Ev.REFRESH_REFUSED)
    ),
]


TABLE = table(ROWS)

# what can arrive in any phase (from the network or the owner) must have a row in every phase
ANY_PHASE = frozenset(
    {
        Ev.ANSWER_AGAIN,
        Ev.TRANSPORT_ERROR,
        Ev.CANCEL,
        Ev.HANGUP,
        Ev.TRANSFER,
        Ev.TRANSFER_AGAIN,
        Ev.BYE_RECEIVED,
        Ev.NOTIFY_RECEIVED,
        Ev.REINVITE_RECEIVED,
        Ev.UPDATE_RECEIVED,
        Ev.QUERY_RECEIVED,
        Ev.ACK_RECEIVED,
        Ev.UNKNOWN_RECEIVED,
    }
)
_missing = [(p, e) for e in ANY_PHASE for p in Phase if (p, e) not in TABLE]
assert not _missing, f"events that can come in any phase lack rows: {_missing}"


class IllegalTransition(transitions.IllegalTransition):
    """The classifier produced an event the table has no row for in this phase: a bug, named."""

    def __init__(self, phase: Phase, event: Ev, call_id: str) -> None:
        super().__init__(f"call {call_id}", phase, event, noun="phase")
        self.phase = phase
        self.event = event


@dataclass(frozen=True, slots=True)
class Input:
    """What an action gets: the time, the message that caused the event (if any), a reason."""

    now: float
    message: Request | Response | None = None
    why: str | None = None
    target: str | None = None  # the transfer target


class Role(StrEnum):
    INVITE = "invite"  # the call's current INVITE
    SPENT = "spent"  # an earlier INVITE of the call (challenged, redirected, 422): ACKs, 2xx ACKed
    CANCEL = "cancel"
    BYE = "bye"
    REFER = "refer"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class Session:
    """The session timer agreed (RFC 4028): the interval and whether we send the refreshes."""

    interval: int
    we_refresh: bool
    by_update: bool  # refresh with UPDATE (the PBX allows it) rather than re-INVITE


def session_expires(value: str | None) -> tuple[int, str | None] | None:
    """`Session-Expires: 90;refresher=uac` → (90, "uac"); None when absent or unreadable."""
    if not value:
        return None
    head = value.split(";", 1)[0].strip()
    if not digits(head) or len(head) > 10:
        return None
    refresher = params(value).get("refresher")
    return int(head), (refresher.lower() if refresher else None)


def _token() -> str:
    return secrets.token_hex(8)


def _bare(uri: str) -> str:
    """A URI without parameters or headers, host lowercased: what 'the same target' means for loops."""
    core = uri.split(";", 1)[0].split("?", 1)[0]
    user, at, host = core.rpartition("@")
    return f"{user}{at}{host.lower()}" if at else core.lower()


def best_contact(resp: Response) -> str | None:
    """The Contact URI of a 3xx with the highest q (RFC 3261 §8.1.3.4), the first among equals."""
    best: tuple[float, str] | None = None
    for value in resp.headers.get_all("contact"):
        try:
            q = float(params(value).get("q", "1") or "1")
        except ValueError:
            q = 1.0
        if best is None or q > best[0]:
            best = (q, uri_of(value))
    return None if best is None else best[1]


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
        row = TABLE.get((self.phase, event))
        if row is None:
            raise IllegalTransition(self.phase, event, self.call_id)
        target, actions = row
        if target is not self.phase:
            self.phase = target
            for timer in [t for t in self._due if target not in TIMER_PHASES[t]]:
                del self._due[timer]
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
            self._dispatch(self._classify_request(message), Input(now, message))
        return self._drain()

    def _relay(self, key: tuple[int, str], role: Role, events: Sequence[object], now: float) -> None:
        """A transaction's events: its sends go out, its responses and timeouts become call events."""
        for e in events:
            if isinstance(e, Transmit):
                self._out.append(Send(e.message, e.retransmission))
            elif isinstance(e, ResponseReceived):
                found = self._classify_response(role, e.response, e.retransmission)
                if found is not None:
                    self._dispatch(found[0], Input(now, e.response, found[1]))
            elif isinstance(e, TimedOut):
                event = {
                    Role.INVITE: Ev.NO_RESPONSE,
                    Role.BYE: Ev.BYE_ANSWERED,
                    Role.REFER: Ev.REFER_FAILED,
                    Role.REFRESH: Ev.REFRESH_TIMED_OUT,
                }.get(role)
                self._txs.pop(key, None)
                if event is not None:
                    why = {
                        Ev.NO_RESPONSE: "no response (Timer B)",
                        Ev.REFER_FAILED: "no response to REFER (Timer F)",
                        Ev.REFRESH_TIMED_OUT: f"session refresh failed: no response (Timer {e.timer})",
                    }.get(event)
                    self._dispatch(event, Input(now, None, why))
            else:  # Terminated: the transaction is done with its timers
                self._txs.pop(key, None)

    def _classify_response(self, role: Role, resp: Response, retransmission: bool) -> tuple[Ev, str | None] | None:
        code = resp.status
        if role is Role.INVITE:
            return self._classify_invite_response(resp, retransmission)
        if role is Role.SPENT:
            return (Ev.ANSWER_AGAIN, None) if 200 <= code < 300 else None
        if code < 200 or role is Role.CANCEL:
            return None
        if role is Role.BYE:
            return Ev.BYE_ANSWERED, None
        if role is Role.REFER:
            return (Ev.REFER_ACCEPTED, None) if code < 300 else (Ev.REFER_FAILED, f"REFER refused: {resp.reason}")
        # Role.REFRESH
        if code < 300 and cseq(resp)[1] == "UPDATE":
            return Ev.REFRESH_UPDATED, None
        if code < 300:
            return (Ev.REFRESH_OK_AGAIN if retransmission else Ev.REFRESH_OK), None
        event = {408: Ev.REFRESH_TIMED_OUT, 481: Ev.REFRESH_NO_DIALOG, 422: Ev.REFRESH_TOO_SMALL}.get(
            code, Ev.REFRESH_REFUSED
        )
        return event, f"session refresh failed: {code} {resp.reason}"

    def _classify_invite_response(self, resp: Response, retransmission: bool) -> tuple[Ev, str | None] | None:
        code = resp.status
        if code == 100:
            return None
        if code < 200:
            waiting = (self.cancel_wanted or self.ring_timed_out) and not self.canceled
            return (Ev.PROVISIONAL_CANCEL_DUE if waiting else Ev.PROVISIONAL), None
        if code < 300:
            if retransmission:
                return Ev.ANSWER_AGAIN, None
            return (Ev.ANSWER_AFTER_CANCEL if self.canceled or self.cancel_wanted else Ev.ANSWER), None
        if self.canceled or self.cancel_wanted or self.ring_timed_out:
            return Ev.REFUSED, None  # no new INVITE once the call is being given up
        if code in (401, 407) and not self.authenticated and self.cfg.username and self.cfg.password:
            try:
                challenge(resp)
            except auth.AuthError as exc:
                return Ev.CHALLENGE_UNUSABLE, f"{resp.reason} ({exc})"
            return Ev.CHALLENGE, None
        if code in (301, 302):
            contact = best_contact(resp)
            if self.redirect is not None:
                first = self.redirect
                return Ev.REDIRECT_AGAIN, (
                    f"second redirect: {code} to {contact} after {first.status} to {first.contact}"
                )
            if contact is None or not contact.lower().startswith(("sip:", "sips:")):
                return Ev.REDIRECT_UNUSABLE, f"redirect without a sip: Contact ({contact or 'none'})"
            if _bare(contact) in {_bare(u) for u in self.tried}:
                return Ev.REDIRECT_LOOP, f"redirect loop: {code} to {contact}, already tried"
            return Ev.REDIRECT, None
        if code == 422:
            if self.min_se is not None:
                asked = resp.headers.get("min-se") or "?"
                return Ev.INTERVAL_TOO_SMALL_AGAIN, f"second 422 (Min-SE {asked}) after asking {self.min_se}"
            return Ev.INTERVAL_TOO_SMALL, None
        return Ev.REFUSED, None

    def _classify_request(self, req: Request) -> Ev:
        return {
            "ACK": Ev.ACK_RECEIVED,
            "BYE": Ev.BYE_RECEIVED,
            "NOTIFY": Ev.NOTIFY_RECEIVED,
            "INVITE": Ev.REINVITE_RECEIVED,
            "UPDATE": Ev.UPDATE_RECEIVED,
            "OPTIONS": Ev.QUERY_RECEIVED,
            "INFO": Ev.QUERY_RECEIVED,
        }.get(req.method, Ev.UNKNOWN_RECEIVED)

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
        self.min_se = _min_se(x.message, self._asked_interval())
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
        self.min_se = _min_se(x.message, self.session.interval)
        self.session = Session(max(self.session.interval, self.min_se), True, self.session.by_update)

    def _answer_ok(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        self._reply(x.message, 200, "OK")

    def _answer_501(self, x: Input) -> None:
        assert isinstance(x.message, Request)
        self._reply(x.message, 501, "Not Implemented")

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


def _min_se(resp: Response, current: int) -> int:
    """The Min-SE a 422 asks for (RFC 4028 §6); one without a readable value doubles what we asked."""
    value = (resp.headers.get("min-se") or "").split(";", 1)[0].strip()
    return int(value) if digits(value) and len(value) <= 10 else max(DEFAULT_MIN_SE, 2 * current)


def sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status line of a message/sipfrag body (RFC 3420), e.g. `SIP/2.0 200 OK` → (200, "OK")."""
    first = body.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
    parts = first.split(" ", 2)
    if len(parts) < 2 or parts[0].upper() != "SIP/2.0" or not digits(parts[1]) or len(parts[1]) != 3:
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
    "TABLE",
    "Answered",
    "Call",
    "CallEvent",
    "EndKind",
    "Ended",
    "IllegalTransition",
    "Media",
    "Outcome",
    "Redirected",
    "Ringing",
    "Send",
    "Transferred",
    "UacConfig",
    "respond",
]
