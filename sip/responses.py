"""The responses telgate answers with (RFC 3261 §8.2.6.2): Via, From, To, Call-ID and CSeq copied from the
request, our To tag when it has none, our User-Agent, and Allow on a 405/501."""

from __future__ import annotations

from .config import ALLOW, USER_AGENT
from .message import Headers, Request, Response, tag
from .requests import tagged


def respond(req: Request, status: int, reason: str, to_tag: str | None = None) -> Response:
    """A response to `req` (RFC 3261 §8.2.6.2): Via, From, To, Call-ID, CSeq copied."""
    h = Headers()
    for via in req.headers.get_all("via"):
        h = h.with_("Via", via)
    to = req.headers.get("to") or ""
    if to_tag and tag(to) is None:
        to = tagged(to, to_tag)
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
