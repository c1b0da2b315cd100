"""Attempt caps per number, across campaigns (issue 25, docs/lawful-calling.md).

Rules (each one is off when its setting is None):
- at most `max_attempts` calls to one number within any `per_days` days: with that many attempts inside
  the last `per_days` days, the number waits until the oldest of them that must fall out of the window
  has done so (an attempt at t counts while now < t + per_days);
- none for `after_refusal_days` days after the callee refused (said no on a call);
- none for `after_opt_out_days` days after an opt-out (an opt-out for good belongs on the blacklist);
- none for `after_abandon_h` hours after an abandoned call to the number (UK Ofcom: 72 h; the default);
- preset `fr_2023` (Code de la consommation D223-9): 4 attempts per 30 days, none for 60 days after a
  refusal; fields given beside the preset win over it.

`check(limits, history, now)` answers None (the number may be called now) or `Blocked(until, reason)`:
the instant every rule is clear again (the latest of them) and the rule that holds longest. The store
supplies `NumberHistory`: the facts about one number over all campaigns, looking back `lookback(limits)`.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.domain.presets import with_preset

PRESETS: dict[str, dict[str, Any]] = {
    "fr_2023": {"max_attempts": 4, "per_days": 30.0, "after_refusal_days": 60.0},
}


class Limits(BaseModel):
    """A campaign's `limits`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Literal["fr_2023"] | None = None
    max_attempts: int | None = Field(None, ge=1, le=1000)
    per_days: float = Field(30.0, gt=0, le=366)
    # at most a year: the number history is kept 366 days (a longer hold belongs on the blacklist)
    after_refusal_days: float | None = Field(None, ge=0, le=366)
    after_opt_out_days: float | None = Field(None, ge=0, le=366)
    after_abandon_h: float | None = Field(72.0, ge=0, le=24 * 366)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        return with_preset(data, PRESETS)


@dataclass(frozen=True, slots=True)
class NumberHistory:
    """What the store knows about one number, over every campaign (times are aware datetimes)."""

    attempts: tuple[datetime, ...] = ()  # every call placed to the number (any order)
    last_refusal: datetime | None = None
    last_opt_out: datetime | None = None
    last_abandon: datetime | None = None


@dataclass(frozen=True, slots=True)
class Blocked:
    until: datetime
    reason: str  # max_attempts | after_refusal | after_opt_out | after_abandon


def lookback(limits: Limits) -> timedelta:
    """How far back the store must read a number's attempts for `check` to be exact."""
    days = [limits.per_days] if limits.max_attempts is not None else []
    return timedelta(days=max(days, default=0.0))


def check(limits: Limits, history: NumberHistory, now: datetime) -> Blocked | None:
    blocks: list[Blocked] = []
    if limits.max_attempts is not None:
        window = timedelta(days=limits.per_days)
        recent = sorted(t for t in history.attempts if now < t + window)
        if len(recent) >= limits.max_attempts:
            blocks.append(Blocked(recent[len(recent) - limits.max_attempts] + window, "max_attempts"))
    for at, hold, reason in (
        (history.last_refusal, limits.after_refusal_days, "after_refusal"),
        (history.last_opt_out, limits.after_opt_out_days, "after_opt_out"),
        (
            history.last_abandon,
            None if limits.after_abandon_h is None else limits.after_abandon_h / 24,
            "after_abandon",
        ),
    ):
        if at is not None and hold is not None and now < at + timedelta(days=hold):
            blocks.append(Blocked(at + timedelta(days=hold), reason))
    return max(blocks, key=lambda b: b.until, default=None)
