"""The requests telgate sends, built in one place (RFC 3261 §8.1.1), sans-IO.

Every request we originate — REGISTER (`sip.register`), the OPTIONS keepalive (`sip.ua`), a call's INVITE,
ACK, BYE, REFER, refresh and CANCEL (`sip.call`), the ACK of a non-2xx final (`sip.transaction`) — starts
with the same headers in the same order:

    Via, Max-Forwards: 70, Route (the route set, in order), From, To, Call-ID, CSeq: <number> <method>

then the headers its method adds, in the order given, then `Content-Type` when it carries a body. Every
value goes through `Headers.with_`, so a name that is not a token or a value holding a control character
is refused there (`HeaderValueError`), nothing sent.

Two requests belong to the INVITE's own transaction (`in_transaction`): the CANCEL (§9.1) and the ACK of a
non-2xx final (§17.1.1.3) copy its top Via (the same branch), its Route, From, Call-ID and CSeq number.

A 401/407 is answered the same way for every method (`challenge`, `authorization`): the strongest digest
challenge of its WWW-/Proxy-Authenticate, answered in Authorization / Proxy-Authorization (RFC 3261 §22.2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from . import auth
from .message import Headers, Request, Response, cseq

MAX_FORWARDS = "70"


def build(
    method: str,
    uri: str,
    *,
    via: str,
    from_: str,
    to: str,
    call_id: str,
    number: int,
    route: Sequence[str] = (),
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str = "application/sdp",
) -> Request:
    """A request of ours: the common headers from the arguments, then `headers` in order, then the body's
    Content-Type (when there is a body)."""
    h = Headers().with_("Via", via).with_("Max-Forwards", MAX_FORWARDS)
    for hop in route:
        h = h.with_("Route", hop)
    h = h.with_("From", from_).with_("To", to).with_("Call-ID", call_id).with_("CSeq", f"{number} {method}")
    for name, value in headers:
        h = h.with_(name, value)
    if body:
        h = h.with_("Content-Type", content_type)
    return Request(method, uri, h, body)


def tagged(addr: str, tag: str | None) -> str:
    """A From/To value with its dialog tag (none: the address alone, e.g. the To of a request out of a dialog)."""
    return addr if tag is None else f"{addr};tag={tag}"


def in_transaction(invite: Request, method: str, to: str | None = None) -> Request:
    """The CANCEL of `invite` (§9.1), or the ACK of its non-2xx final (§17.1.1.3, `to`: the response's To):
    its Request-URI, top Via, Route, From, Call-ID and CSeq number, the method's own."""
    h = invite.headers
    return build(
        method,
        invite.uri,
        via=h.get_all("via")[0],
        from_=h.get("from") or "",
        to=to or h.get("to") or "",
        call_id=h.get("call-id") or "",
        number=cseq(invite)[0],
        route=h.get_all("route"),
    )


def challenge(resp: Response) -> tuple[auth.Challenge, str]:
    """The strongest digest challenge of a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate), and the header
    that answers it; `auth.AuthError` when there is none we can answer."""
    if resp.status == 401:
        return auth.best(resp.headers.get_all("www-authenticate")), "Authorization"
    return auth.best(resp.headers.get_all("proxy-authenticate")), "Proxy-Authorization"


def authorization(
    found: tuple[auth.Challenge, str], username: str, password: str, method: str, uri: str
) -> tuple[str, str]:
    """The header (name, value) answering a challenge `challenge` found, for a request `method` to `uri`."""
    ch, name = found
    return name, auth.response(ch, username, password, method, uri)
