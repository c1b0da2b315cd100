"""The call's classifier: what arrives for a call (a response to one of its transactions, a request from the
far end, a transaction's timeout) named as one `Ev` of the phase table (`sip.call_table`), with the reason
the end will carry. The only place that looks at status codes, headers and the call's counters; it decides
nothing and changes nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from . import auth
from .call_table import Ev
from .dtmf import DtmfError, InfoDigit, parse_info
from .message import Request, Response, cseq, digits, params, uri_of
from .requests import challenge

if TYPE_CHECKING:
    from .call import Call


class Role(StrEnum):
    INVITE = "invite"  # the call's current INVITE
    SPENT = "spent"  # an earlier INVITE of the call (challenged, redirected, 422): ACKs, 2xx ACKed
    CANCEL = "cancel"
    BYE = "bye"
    REFER = "refer"
    REFRESH = "refresh"


def classify_response(call: Call, role: Role, resp: Response, retransmission: bool) -> tuple[Ev, str | None] | None:
    code = resp.status
    if role is Role.INVITE:
        return classify_invite_response(call, resp, retransmission)
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


def classify_invite_response(call: Call, resp: Response, retransmission: bool) -> tuple[Ev, str | None] | None:
    code = resp.status
    if code == 100:
        return None
    if code < 200:
        waiting = (call.cancel_wanted or call.ring_timed_out) and not call.canceled
        return (Ev.PROVISIONAL_CANCEL_DUE if waiting else Ev.PROVISIONAL), None
    if code < 300:
        if retransmission:
            return Ev.ANSWER_AGAIN, None
        return (Ev.ANSWER_AFTER_CANCEL if call.canceled or call.cancel_wanted else Ev.ANSWER), None
    if call.canceled or call.cancel_wanted or call.ring_timed_out:
        return Ev.REFUSED, None  # no new INVITE once the call is being given up
    if code in (401, 407) and not call.authenticated and call.cfg.username and call.cfg.password:
        try:
            challenge(resp)
        except auth.AuthError as exc:
            return Ev.CHALLENGE_UNUSABLE, f"{resp.reason} ({exc})"
        return Ev.CHALLENGE, None
    if code in (301, 302):
        contact = best_contact(resp)
        if call.redirect is not None:
            first = call.redirect
            return Ev.REDIRECT_AGAIN, (f"second redirect: {code} to {contact} after {first.status} to {first.contact}")
        if contact is None or not contact.lower().startswith(("sip:", "sips:")):
            return Ev.REDIRECT_UNUSABLE, f"redirect without a sip: Contact ({contact or 'none'})"
        if _bare(contact) in {_bare(u) for u in call.tried}:
            return Ev.REDIRECT_LOOP, f"redirect loop: {code} to {contact}, already tried"
        return Ev.REDIRECT, None
    if code == 422:
        if call.min_se is not None:
            asked = resp.headers.get("min-se") or "?"
            return Ev.INTERVAL_TOO_SMALL_AGAIN, f"second 422 (Min-SE {asked}) after asking {call.min_se}"
        return Ev.INTERVAL_TOO_SMALL, None
    return Ev.REFUSED, None


DTMF_TYPES = frozenset({"application/dtmf-relay", "application/dtmf"})


def classify_request(req: Request) -> tuple[Ev, InfoDigit | None, str | None]:
    """A request from the far end as its event; an INFO carrying DTMF with the key it read, or why its body
    cannot be read."""
    if req.method == "INFO":
        content_type = req.headers.get("content-type") or ""
        if content_type.split(";", 1)[0].strip().lower() in DTMF_TYPES:
            try:
                return Ev.DTMF_RECEIVED, parse_info(content_type, req.body), None
            except DtmfError as exc:
                return Ev.DTMF_MALFORMED, None, str(exc)
    event = {
        "ACK": Ev.ACK_RECEIVED,
        "BYE": Ev.BYE_RECEIVED,
        "NOTIFY": Ev.NOTIFY_RECEIVED,
        "INVITE": Ev.REINVITE_RECEIVED,
        "UPDATE": Ev.UPDATE_RECEIVED,
        "OPTIONS": Ev.QUERY_RECEIVED,
        "INFO": Ev.QUERY_RECEIVED,
    }.get(req.method, Ev.UNKNOWN_RECEIVED)
    return event, None, None


def classify_timeout(role: Role, timer: str) -> tuple[Ev, str | None] | None:
    """A transaction of the call had no final response (Timer B or F): the event, if its role has one."""
    event = {
        Role.INVITE: Ev.NO_RESPONSE,
        Role.BYE: Ev.BYE_ANSWERED,
        Role.REFER: Ev.REFER_FAILED,
        Role.REFRESH: Ev.REFRESH_TIMED_OUT,
    }.get(role)
    if event is None:
        return None
    why = {
        Ev.NO_RESPONSE: "no response (Timer B)",
        Ev.REFER_FAILED: "no response to REFER (Timer F)",
        Ev.REFRESH_TIMED_OUT: f"session refresh failed: no response (Timer {timer})",
    }.get(event)
    return event, why


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


def sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status line of a message/sipfrag body (RFC 3420), e.g. `SIP/2.0 200 OK` → (200, "OK")."""
    first = body.split(b"\n", 1)[0].strip().decode("utf-8", "replace")
    parts = first.split(" ", 2)
    if len(parts) < 2 or parts[0].upper() != "SIP/2.0" or not digits(parts[1]) or len(parts[1]) != 3:
        return None
    return int(parts[1]), parts[2] if len(parts) > 2 else ""
