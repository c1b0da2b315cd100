"""RFC 4028 session timers, read from messages: the interval and refresher a `Session-Expires` gives, the
Min-SE a 422 asks for, and the session a call agreed (`sip.call` arms and refreshes it)."""

from __future__ import annotations

from dataclasses import dataclass

from .message import Response, digits, params

DEFAULT_MIN_SE = 90  # RFC 4028 §5: Min-SE when none is given, and the lowest a UAS may ask


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


def min_se_asked(resp: Response, current: int) -> int:
    """The Min-SE a 422 asks for (RFC 4028 §6); one without a readable value doubles what we asked."""
    value = (resp.headers.get("min-se") or "").split(";", 1)[0].strip()
    return int(value) if digits(value) and len(value) <= 10 else max(DEFAULT_MIN_SE, 2 * current)
