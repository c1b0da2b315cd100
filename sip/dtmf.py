"""DTMF received out of band and digit collection. Sans-IO.

Rules:
- RFC 4733 telephone-event payloads (§2.3): event (8 bits), E end bit, R reserved, volume (6 bits, -dBm0),
  duration (16 bits, timestamp units). Events 0-9 are the digits, 10 `*`, 11 `#`, 12-15 A-D, 16 flash;
  others parse with `digit` None. A payload shorter than 4 bytes is refused with `DtmfError`; bytes after
  the first 4 are ignored (several events in one packet need RFC 2198, which telgate does not offer).
- One key press is one event: all its packets carry the RTP timestamp of its start, and the end packet
  is sent three times (§2.5.1.4). `TelephoneEventReceiver` counts a digit once per timestamp, when
  the first of its packets arrives (the end packets alone still count it); a long event split into
  segments (§2.5.1.3: a new timestamp for the same event before its end) continues the press.
- SIP INFO bodies: `application/dtmf-relay` ("Signal=5\\r\\nDuration=160", keys case-insensitive, Duration
  in ms and optional, Signal also 10-15 for * # A-D) and `application/dtmf` ("5"). Any other content type
  or body is refused with `DtmfError` naming what was wrong.
- `Gather` follows Twilio's <Gather>: it ends with `max_digits` digits (reason max_digits), at
  `finish_on_key` (reason finish_on_key; the key is not part of the digits, which may be empty; an empty
  `finish_on_key` disables it), or when `timeout_s` passes without a digit -- from `start` for the first
  digit, from the last digit after that (`inter_digit_timeout_s` if given) -- with reason timeout; a key
  pressed before `start` (over the prompt) counts and starts the clock. A key at or after the deadline
  ends the gather by timeout without it. Time is an input (`now`, seconds); `deadline()` says when to
  call `tick`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

DIGITS = "0123456789*#ABCD"
EVENT_FLASH = 16


class DtmfError(ValueError):
    """A telephone-event payload, INFO body or digit that cannot be read; the message says why."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    event: int
    end: bool
    volume: int  # -dBm0, 0-63
    duration: int  # timestamp units (1/8000 s for 8 kHz)

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def parse_telephone_event(payload: bytes) -> TelephoneEvent:
    """An RFC 4733 telephone-event payload; `DtmfError` if it is shorter than 4 bytes."""
    if len(payload) < 4:
        raise DtmfError(f"telephone-event payload of {len(payload)} bytes, 4 needed")
    return TelephoneEvent(
        event=payload[0],
        end=bool(payload[1] & 0x80),
        volume=payload[1] & 0x3F,
        duration=(payload[2] << 8) | payload[3],
    )


@dataclass(frozen=True, slots=True)
class DigitReceived:
    digit: str
    timestamp: int  # RTP timestamp of the event's start


class TelephoneEventReceiver:
    """One RTP stream's telephone events to digits, each counted once (see the module's rules)."""

    def __init__(self, remember: int = 16) -> None:
        self._seen: deque[int] = deque(maxlen=remember)
        self._open: tuple[int, int, int] | None = None  # (event, timestamp, duration) of an unended event

    def receive(self, payload: bytes, timestamp: int) -> DigitReceived | None:
        """A telephone-event packet's payload and RTP timestamp; the digit when this is a new press.
        `DtmfError` for a short payload; None for a repeat, a non-digit event or a segment."""
        ev = parse_telephone_event(payload)
        timestamp &= 0xFFFFFFFF
        if timestamp in self._seen:
            if ev.end and self._open is not None and self._open[1] == timestamp:
                self._open = None
            return None
        self._seen.append(timestamp)
        segment = (
            self._open is not None
            and self._open[0] == ev.event
            and self._open[2] >= 0xFF00  # the previous segment ran to (nearly) the longest duration
            and 0 < (timestamp - self._open[1]) & 0xFFFFFFFF <= self._open[2] + 0xFFFF
        )
        self._open = None if ev.end else (ev.event, timestamp, ev.duration)
        if segment or ev.digit is None:
            return None
        return DigitReceived(ev.digit, timestamp)


@dataclass(frozen=True, slots=True)
class InfoDigit:
    digit: str
    duration_ms: int | None


def parse_info(content_type: str, body: bytes) -> InfoDigit:
    """A SIP INFO request's DTMF body (application/dtmf-relay or application/dtmf); `DtmfError` otherwise."""
    kind = content_type.split(";", 1)[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise DtmfError("INFO body is not UTF-8") from None
    if kind == "application/dtmf":
        return InfoDigit(_digit(text.strip()), None)
    if kind != "application/dtmf-relay":
        raise DtmfError(f"INFO content type {kind or '(none)'!r} carries no DTMF")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise DtmfError(f"dtmf-relay line without '=': {line[:40]!r}")
        fields[name.strip().lower()] = value.strip()
    if "signal" not in fields:
        raise DtmfError("dtmf-relay body without Signal")
    signal = fields["signal"]
    if signal.isascii() and signal.isdigit() and 10 <= int(signal) <= 15:
        signal = DIGITS[int(signal)]
    duration = fields.get("duration")
    if duration is None:
        return InfoDigit(_digit(signal), None)
    if not (duration.isascii() and duration.isdigit() and len(duration) <= 9):
        raise DtmfError(f"dtmf-relay Duration is not a number of ms: {duration[:20]!r}")
    return InfoDigit(_digit(signal), int(duration))


def _digit(text: str) -> str:
    if len(text) != 1 or text.upper() not in DIGITS:
        raise DtmfError(f"not a DTMF digit: {text[:20]!r}")
    return text.upper()


GatherReason = Literal["max_digits", "finish_on_key", "timeout"]


@dataclass(frozen=True, slots=True)
class GatherResult:
    digits: str
    reason: GatherReason


class Gather:
    """Collects digits like Twilio's <Gather> (see the module's rules)."""

    def __init__(
        self,
        max_digits: int | None = None,
        finish_on_key: str = "#",
        timeout_s: float = 5.0,
        inter_digit_timeout_s: float | None = None,
    ) -> None:
        if max_digits is not None and max_digits < 1:
            raise ValueError("max_digits must be at least 1")
        if finish_on_key not in ("", *DIGITS):
            raise ValueError(f"finish_on_key must be one DTMF key or empty, not {finish_on_key!r}")
        if timeout_s <= 0 or (inter_digit_timeout_s is not None and inter_digit_timeout_s <= 0):
            raise ValueError("timeouts must be positive")
        self.max_digits = max_digits
        self.finish_on_key = finish_on_key
        self.timeout_s = timeout_s
        self.inter_digit_timeout_s = inter_digit_timeout_s
        self._digits = ""
        self._deadline: float | None = None
        self.result: GatherResult | None = None

    def start(self, now: float) -> None:
        """The prompt ended (or gathering starts now): the first digit is awaited for `timeout_s`."""
        if self.result is None and self._deadline is None:
            self._deadline = now + self.timeout_s

    def digit(self, d: str, now: float) -> GatherResult | None:
        """A key pressed at `now`; the result if it ended the gather. `DtmfError` for a non-key."""
        d = _digit(d)
        if self.result is not None:
            return None
        if self._deadline is not None and now >= self._deadline:
            return self.tick(now)
        if d == self.finish_on_key:
            return self._end("finish_on_key")
        self._digits += d
        if self.max_digits is not None and len(self._digits) >= self.max_digits:
            return self._end("max_digits")
        wait = self.inter_digit_timeout_s if self.inter_digit_timeout_s is not None else self.timeout_s
        self._deadline = now + wait
        return None

    def tick(self, now: float) -> GatherResult | None:
        if self.result is None and self._deadline is not None and now >= self._deadline:
            return self._end("timeout")
        return None

    def deadline(self) -> float | None:
        return None if self.result is not None else self._deadline

    def _end(self, reason: GatherReason) -> GatherResult:
        self.result = GatherResult(self._digits, reason)
        self._deadline = None
        return self.result
