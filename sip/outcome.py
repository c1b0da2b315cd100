"""How a call attempt ended (SPEC §6.1), as one table: SIP final responses and Q.850 causes → outcome.

Rules:
- a `Reason: Q.850;cause=N` on the final response decides before the SIP code (Asterisk, FreeSWITCH);
  causes 34/38/41/42 decide only on a 5xx (the far end's network congestion);
- otherwise the status code decides; a code in no row is `failed`;
- 401/407 are answered once with credentials before they count (as `failed`, the second time).
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    INVALID_NUMBER = "invalid_number"
    FAILED = "failed"


Q850: dict[int, Outcome] = {
    17: Outcome.REJECTED,
    21: Outcome.REJECTED,
    18: Outcome.UNREACHABLE,
    19: Outcome.UNREACHABLE,
    20: Outcome.UNREACHABLE,
    1: Outcome.INVALID_NUMBER,
    3: Outcome.INVALID_NUMBER,
    28: Outcome.INVALID_NUMBER,
}
Q850_ON_5XX = {34, 38, 41, 42}  # no circuit, network out of order, temporary failure, congestion

CODES: dict[int, Outcome] = {
    486: Outcome.REJECTED,
    600: Outcome.REJECTED,
    603: Outcome.REJECTED,
    607: Outcome.REJECTED,
    608: Outcome.REJECTED,
    480: Outcome.UNREACHABLE,
    408: Outcome.UNREACHABLE,
    487: Outcome.UNREACHABLE,
    404: Outcome.INVALID_NUMBER,
    484: Outcome.INVALID_NUMBER,
    485: Outcome.INVALID_NUMBER,
    604: Outcome.INVALID_NUMBER,
}


def final_outcome(status: int, q850: int | None) -> Outcome:
    """The outcome of a final non-2xx response to our INVITE."""
    if q850 is not None:
        if q850 in Q850:
            return Q850[q850]
        if q850 in Q850_ON_5XX and 500 <= status < 600:
            return Outcome.UNREACHABLE
    return CODES.get(status, Outcome.FAILED)
