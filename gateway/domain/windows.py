"""Calling windows (issue 25, docs/lawful-calling.md): when a contact may be called, in its local time.

Rules:
- a campaign's `window` is a weekly schedule of local time ranges ("HH:MM-HH:MM", end after start,
  "24:00" allowed as an end; a day not named is closed), public holidays of one country (and optionally
  one region) closed all day, and a margin: a call is not started when less than `margin_s` remain before
  the range closes (Genesys Cloud stops one minute before the close; so do we by default);
- presets fill what the window leaves unsaid: `us_tcpa` every day 08:00-21:00 (47 CFR 64.1200(c)(1),
  16 CFR 310.4(c)), no holiday rule, default zone America/New_York; `fr_2023` Monday-Friday 10:00-13:00
  and 14:00-20:00, French public holidays closed (Code de la consommation D223-9), default zone
  Europe/Paris. Without a preset the default zone is UTC;
- a contact's zones come from its number (`zones_for_number`, phonenumbers' geocoding); a number that maps
  to several zones may be called only when every one of them is inside the window (their overlap); a
  number with none uses the window's `default_tz`;
- local wall times become instants with zoneinfo, on the safe side of every DST change: a start or end
  that does not exist (spring forward) is the instant the clocks jump (so 02:30-05:00 on that night opens
  at 03:00 new time); a start that exists twice (fall back) is its later instance, an end its earlier
  one. No instant is ever inside the window whose wall time is outside the range;
- `opens_at(window, zones, now)` is `now` when a call may start now, else the next instant one may, or
  None when none within `HORIZON_DAYS` (zones too far apart for a short window: 09:00-12:00 in Tokyo and
  in New York never meet; under `us_tcpa`, 13 hours long, any two zones meet somewhere). `is_open` is
  `opens_at(...) == now`.

Pure: `now` is an input (an aware datetime, any zone; results are UTC). The holiday calendars are cached
per (country, subdiv, year); nothing else is kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
import phonenumbers
from phonenumbers import timezone as phone_tz
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.domain.presets import with_preset

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HORIZON_DAYS = 366
MAX_RANGES_PER_DAY = 24
_RANGE = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")

Preset = Literal["us_tcpa", "fr_2023"]


class HolidayRule(BaseModel):
    """Public holidays of `country` (ISO 3166-1 alpha-2), and of `subdiv` (its region) when given."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    country: str = Field(min_length=2, max_length=3)
    subdiv: str | None = None

    @model_validator(mode="after")
    def _known(self) -> HolidayRule:
        try:
            holidays.country_holidays(self.country, subdiv=self.subdiv)
        except NotImplementedError as exc:
            raise ValueError(str(exc)) from exc
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "us_tcpa": {
        "weekly": {day: ("08:00-21:00",) for day in DAYS},
        "holidays": None,
        "default_tz": "America/New_York",
    },
    "fr_2023": {
        "weekly": {day: ("10:00-13:00", "14:00-20:00") for day in DAYS[:5]},
        "holidays": {"country": "FR"},
        "default_tz": "Europe/Paris",
    },
}


class CallingWindow(BaseModel):
    """A campaign's `window`. Fields given beside a preset win over the preset's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    preset: Preset | None = None
    weekly: Mapping[str, tuple[str, ...]] = Field(default_factory=dict)
    holidays: HolidayRule | None = None
    margin_s: float = Field(60.0, ge=0, le=3600)
    default_tz: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        return with_preset(data, PRESETS)

    @field_validator("weekly")
    @classmethod
    def _weekly(cls, v: Mapping[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        unknown = sorted(set(v) - set(DAYS))
        if unknown:
            raise ValueError(f"unknown day {unknown[0]!r}: days are {', '.join(DAYS)}")
        for ranges in v.values():
            if len(ranges) > MAX_RANGES_PER_DAY:  # every dial's check walks them, day after day
                raise ValueError(f"at most {MAX_RANGES_PER_DAY} time ranges a day")
            for text in ranges:
                _parse_range(text)
        return {day: tuple(v[day]) for day in DAYS if day in v}

    @field_validator("default_tz")
    @classmethod
    def _tz(cls, v: str) -> str:
        _zone(v)
        return v

    @model_validator(mode="after")
    def _some_range(self) -> CallingWindow:
        if not any(self.weekly.values()):
            raise ValueError("a window needs at least one time range (or a preset)")
        return self

    def ranges(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per weekday (Monday first) its ranges as minutes after midnight, sorted."""
        return tuple(tuple(sorted(_parse_range(t) for t in self.weekly.get(day, ()))) for day in DAYS)


def zones_for_number(e164: str) -> tuple[str, ...]:
    """The IANA zones phonenumbers gives for a number (its geographic prefix); () when it knows none."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    zones = []
    for name in phone_tz.time_zones_for_number(number):
        if name == "Etc/Unknown":
            continue
        try:
            _zone(name)
        except ValueError:
            continue
        zones.append(name)
    return tuple(zones)


def is_open(window: CallingWindow, zones: tuple[str, ...], now: datetime) -> bool:
    return opens_at(window, zones, now) == now.astimezone(UTC)


def opens_at(window: CallingWindow, zones: tuple[str, ...], now: datetime) -> datetime | None:
    """`now` (in UTC) when a call may start now; else the next instant one may; None if none within
    HORIZON_DAYS."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    t = _epoch(now)
    margin = window.margin_s
    horizon = t + HORIZON_DAYS * 86400
    streams = [_zone_intervals(window, _zone(z), now) for z in (zones or (window.default_tz,))]
    merged = _merge(functools.reduce(_intersect, streams[1:], streams[0]))
    for start, end in merged:
        if start > horizon:
            return None
        last = end - margin  # a call may start in [start, last)
        if last > t and last > start:
            return now.astimezone(UTC) if start <= t else datetime.fromtimestamp(start, UTC)
    return None


# --- internals -----------------------------------------------------------------------------------------


def _parse_range(text: str) -> tuple[int, int]:
    m = _RANGE.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start >= 24 * 60 or end > 24 * 60 or start >= end:
        raise ValueError(f"{text!r}: the start must be before the end, both within 00:00-24:00")
    return start, end


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}") from exc


@functools.lru_cache(maxsize=256)
def _holidays(country: str, subdiv: str | None, year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays(country, subdiv=subdiv, years=year).keys())


def _epoch(dt: datetime) -> float:
    return dt.timestamp()


def _instant(day: date, minutes: int, zone: ZoneInfo, late: bool) -> float:
    """The instant of a local wall time, on the safe side (module rules): a time skipped by a DST jump is
    the jump itself; a time that exists twice is its later instance when `late`, else its earlier."""
    if minutes == 24 * 60:
        day, minutes = day + timedelta(days=1), 0
    wall = datetime.combine(day, time(minutes // 60, minutes % 60))
    a = wall.replace(tzinfo=zone, fold=0).timestamp()
    b = wall.replace(tzinfo=zone, fold=1).timestamp()
    if a == b:
        return a
    lo, hi = min(a, b), max(a, b)
    if datetime.fromtimestamp(lo, zone).replace(tzinfo=None) == wall:  # it exists twice (fall back)
        return hi if late else lo
    # skipped (spring forward): find the jump between the two readings, to the second
    off_lo = datetime.fromtimestamp(lo, zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == off_lo:
            lo = mid
        else:
            hi = mid
    return hi


def _zone_intervals(window: CallingWindow, zone: ZoneInfo, now: datetime) -> Iterator[tuple[float, float]]:
    """The window's open intervals in one zone as epoch seconds, in order, from the local day before now."""
    ranges = window.ranges()
    rule = window.holidays
    day = now.astimezone(zone).date() - timedelta(days=1)
    for _ in range(HORIZON_DAYS + 2):
        if rule is None or day not in _holidays(rule.country, rule.subdiv, day.year):
            for start, end in ranges[day.weekday()]:
                a, b = _instant(day, start, zone, late=True), _instant(day, end, zone, late=False)
                if a < b:
                    yield a, b
        day += timedelta(days=1)


def _intersect(xs: Iterator[tuple[float, float]], ys: Iterator[tuple[float, float]]) -> Iterator[tuple[float, float]]:
    xs, ys = _merge(xs), _merge(ys)
    x, y = next(xs, None), next(ys, None)
    while x is not None and y is not None:
        start, end = max(x[0], y[0]), min(x[1], y[1])
        if start < end:
            yield start, end
        if x[1] <= y[1]:
            x = next(xs, None)
        else:
            y = next(ys, None)


def _merge(xs: Iterator[tuple[float, float]]) -> Iterator[tuple[float, float]]:
    """Join intervals that touch or overlap (ranges ending at 24:00 and starting at 00:00 next day are
    one stretch: the margin applies only before a real close)."""
    pending: tuple[float, float] | None = None
    for start, end in xs:
        if pending is not None and start <= pending[1]:
            pending = (pending[0], max(pending[1], end))
            continue
        if pending is not None:
            yield pending
        pending = (start, end)
    if pending is not None:
        yield pending
