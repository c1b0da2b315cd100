"""The call's phase table (`sip.call.Call` runs it): one outbound call as a UAC, as data.

How it is built: what arrives (a response, a request, a timer, the owner's command) is first *classified*
into one `Ev` (`sip.call_classify`, the only place that looks at codes, headers and counters); then
`TABLE[(phase, event)]` says the next phase and the actions, in order. Actions send, arm timers and tell
the owner; they never change the phase. A (phase, event) that is not in the table raises
`IllegalTransition` naming both: the classifier produced something the rules below say cannot happen.

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
- an INFO carrying DTMF (`application/dtmf-relay`, `application/dtmf`) is answered 200 and, on an answered
  call, told to the owner (`DtmfPressed`); one whose body cannot be read is answered 400 (a malformed
  request); any other INFO is answered 200 as an OPTIONS is;
- once our BYE is sent, or the call ended, what still arrives is answered or absorbed, never decided.

Timers: one mechanism. The call's own timers (`Timer`) live in one dict of deadlines, each allowed only in
the phases `TIMER_PHASES` gives it (a phase change drops the others); the transactions keep theirs.
`get_timer()` is the earliest of all; `handle_timer(now)` fires what is due, through the same table.
"""

from __future__ import annotations

from enum import StrEnum

from . import transitions
from .transitions import STAY, table


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
    QUERY_RECEIVED = "query_received"  # OPTIONS, an INFO that carries no DTMF
    DTMF_RECEIVED = "dtmf_received"  # an INFO with a DTMF body we can read
    DTMF_MALFORMED = "dtmf_malformed"  # an INFO of a DTMF content type whose body we cannot read
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
    ANSWER_400 = "answer_400"
    DTMF_PRESSED = "dtmf_pressed"
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
    ((CONFIRMED,), Ev.DTMF_RECEIVED, STAY, (Do.ANSWER_OK, Do.DTMF_PRESSED)),
    ((INVITING, EARLY, CLOSING, ENDED), Ev.DTMF_RECEIVED, STAY, (Do.ANSWER_OK,)),  # no call to press into
    (ALL, Ev.DTMF_MALFORMED, STAY, (Do.ANSWER_400,)),
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
        Ev.DTMF_RECEIVED,
        Ev.DTMF_MALFORMED,
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
