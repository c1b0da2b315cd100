"""What a call tells its owner (`sip.call.Call`): messages to send, ringing, the answer, a redirect
followed, a transfer's outcome, a key pressed (SIP INFO), and the end with its kind, status, reason and
talk time."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .message import Request, Response
from .sdp import Media


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


@dataclass(frozen=True, slots=True)
class DtmfPressed:
    """A key the far end pressed, told by an in-dialog INFO (`application/dtmf-relay`, `application/dtmf`)."""

    digit: str
    duration_ms: int | None = None


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


CallEvent = Send | Ringing | Answered | Redirected | Transferred | DtmfPressed | Ended
