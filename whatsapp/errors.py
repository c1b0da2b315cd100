"""Cloud API error codes → what they mean for a message (SPEC §6.2), as one table.

Rules:
- a code is looked up in `CODES`; an HTTP 5xx without a listed code, and a timeout before the request
  was written, are `RETRYABLE`;
- a code in no row: on a send response it is `REJECTED` (the API refused this message), on a webhook
  `failed` status it is `UNDELIVERED`;
- account-level codes also pause the campaigns that send through the account.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorClass(StrEnum):
    RETRYABLE = "retryable"  # try again later, while attempts remain; then `error`
    PAIR_LIMIT = "pair_limit"  # 131049: not sooner than 24 h
    INVALID = "invalid"  # the number or the request is bad: `invalid_record`
    ACCOUNT = "account"  # auth, restriction, payment: `error` and the campaign pauses
    SENDING_FAILED = "sending_failed"  # 131026: the receiver cannot get this message
    UNDELIVERED = "undelivered"  # a webhook `failed` with another code: `delivery_failed`
    REJECTED = "rejected"  # a send refused with a code in no row: `error`


_RETRYABLE = {130429, 131056, 4, 80007, 1, 2, 131000, 131016, 131057, 133004}
_INVALID = {100, 131008, 131009, 131021, 131030, 132000, 132012}
_ACCOUNT = {
    0,
    3,
    10,
    190,
    368,
    131031,
    130497,
    131042,
    131045,
    133010,
    132001,
    132005,
    132007,
    132015,
    132016,
    *range(200, 300),
}

CODES: dict[int, ErrorClass] = {
    **{c: ErrorClass.RETRYABLE for c in _RETRYABLE},
    **{c: ErrorClass.INVALID for c in _INVALID},
    **{c: ErrorClass.ACCOUNT for c in _ACCOUNT},
    131026: ErrorClass.SENDING_FAILED,
    131049: ErrorClass.PAIR_LIMIT,
}
RATE_LIMIT_CODE = 130429  # Cloud API throughput reached: the sender halves its rate for a minute


def classify(code: int | None, http_status: int | None = None, on_webhook: bool = False) -> ErrorClass:
    if code is not None and code in CODES:
        return CODES[code]
    if http_status is not None and http_status >= 500:
        return ErrorClass.RETRYABLE
    return ErrorClass.UNDELIVERED if on_webhook else ErrorClass.REJECTED


def is_account_level(code: int | None) -> bool:
    return code is not None and CODES.get(code) is ErrorClass.ACCOUNT
