"""Calling windows (gateway/domain/windows.py): local time per zone, DST, holidays, overlap, margin."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.domain.windows import CallingWindow, is_open, opens_at, zones_for_number

NY = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")
US = CallingWindow(preset="us_tcpa")
FR = CallingWindow(preset="fr_2023")


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone)  # type: ignore[misc]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def test_us_tcpa_closes_a_margin_before_nine_pm() -> None:
    ny = ("America/New_York",)
    assert is_open(US, ny, local(NY, 2026, 3, 2, 20, 58, 59))
    assert not is_open(US, ny, local(NY, 2026, 3, 2, 20, 59, 30))  # 30 s left < margin 60 s
    assert opens_at(US, ny, local(NY, 2026, 3, 2, 20, 59, 30)) == local(NY, 2026, 3, 3, 8, 0)
    assert not is_open(US, ny, local(NY, 2026, 3, 3, 7, 59, 59))
    assert is_open(US, ny, local(NY, 2026, 3, 3, 8, 0))
    assert is_open(CallingWindow(preset="us_tcpa", margin_s=0), ny, local(NY, 2026, 3, 2, 20, 59, 30))


def test_open_returns_now_itself_in_utc() -> None:
    now = local(NY, 2026, 3, 2, 12, 0, 0, 123456)
    assert opens_at(US, ("America/New_York",), now) == now
    assert opens_at(US, ("America/New_York",), now).tzinfo is UTC  # type: ignore[union-attr]


def test_new_york_across_spring_forward_and_fall_back() -> None:
    ny = ("America/New_York",)
    # Saturday 7 March 2026, 21:30 EST; Sunday 8 March the clocks jump 02:00 -> 03:00: 08:00 EDT is 12:00 UTC
    assert opens_at(US, ny, local(NY, 2026, 3, 7, 21, 30)) == utc(2026, 3, 8, 12, 0)
    # Saturday 31 October, 22:00 EDT; Sunday 1 November falls back: 08:00 EST is 13:00 UTC
    assert opens_at(US, ny, local(NY, 2026, 10, 31, 22, 0)) == utc(2026, 11, 1, 13, 0)
    # and the evening close moves with it: 20:59:30 EST on the Sunday is 01:59:30 UTC
    assert not is_open(US, ny, utc(2026, 11, 2, 1, 59, 30))
    assert is_open(US, ny, utc(2026, 11, 2, 1, 58, 0))


def test_paris_across_dst_and_the_weekend() -> None:
    paris = ("Europe/Paris",)
    # Friday 27 March 2026, 20:30 CET: closed until Monday 30 March 10:00 CEST (08:00 UTC; DST began Sunday)
    assert opens_at(FR, paris, local(PARIS, 2026, 3, 27, 20, 30)) == utc(2026, 3, 30, 8, 0)
    # Friday 23 October 20:30 CEST: Monday 26 October 10:00 CET is 09:00 UTC
    assert opens_at(FR, paris, local(PARIS, 2026, 10, 23, 20, 30)) == utc(2026, 10, 26, 9, 0)
    # lunch: 12:59:30 is within the margin of the 13:00 close; it opens again at 14:00
    assert opens_at(FR, paris, local(PARIS, 2026, 6, 3, 12, 59, 30)) == local(PARIS, 2026, 6, 3, 14, 0)
    assert not is_open(FR, paris, local(PARIS, 2026, 6, 6, 11, 0))  # a Saturday


def test_a_range_that_does_not_exist_on_the_spring_forward_night_opens_at_the_jump() -> None:
    night = CallingWindow(weekly={"sun": ("02:30-05:00",)}, default_tz="Europe/Paris")
    # 29 March 2026: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 never happens
    assert opens_at(night, (), utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 0)
    assert not is_open(night, (), utc(2026, 3, 29, 0, 59, 59))


def test_a_start_that_happens_twice_opens_at_its_later_instance() -> None:
    night = CallingWindow(weekly={"sun": ("02:30-05:00",)}, default_tz="Europe/Paris")
    # 25 October 2026: 03:00 CEST becomes 02:00 CET; 02:30 happens at 00:30 UTC and again at 01:30 UTC
    assert opens_at(night, (), utc(2026, 10, 25, 0, 0)) == utc(2026, 10, 25, 1, 30)
    assert not is_open(night, (), utc(2026, 10, 25, 0, 45))


@pytest.mark.parametrize(
    ("holiday", "reopens"),
    [
        (local(PARIS, 2026, 7, 14, 11, 0), utc(2026, 7, 15, 8, 0)),  # a Tuesday: Wednesday 10:00 CEST
        (local(PARIS, 2026, 5, 1, 11, 0), utc(2026, 5, 4, 8, 0)),  # a Friday: Monday 4 May
        (local(PARIS, 2026, 12, 24, 20, 30), utc(2026, 12, 28, 9, 0)),  # Christmas Friday, then the weekend
    ],
)
def test_french_public_holidays_are_closed(holiday: datetime, reopens: datetime) -> None:
    assert not is_open(FR, ("Europe/Paris",), holiday)
    assert opens_at(FR, ("Europe/Paris",), holiday) == reopens


def test_holidays_of_a_region() -> None:
    # 26 December is a holiday in Alsace-Moselle (subdiv 6AE), not in the rest of France
    alsace = CallingWindow(preset="fr_2023", holidays={"country": "FR", "subdiv": "6AE"})
    boxing_day = local(PARIS, 2025, 12, 26, 11, 0)  # Friday 26 December 2025
    assert is_open(FR, (), boxing_day)
    assert not is_open(alsace, (), boxing_day)


def test_a_number_spanning_several_zones_is_called_only_in_their_overlap() -> None:
    zones = zones_for_number("+19075551234")  # Alaska: Anchorage and Adak (one hour apart)
    assert set(zones) == {"America/Anchorage", "America/Adak"}
    # 08:00 in Anchorage (AKDT, UTC-8) is 07:00 in Adak (HDT, UTC-9): it opens at 08:00 Adak, 17:00 UTC
    assert opens_at(US, zones, utc(2026, 6, 3, 16, 0)) == utc(2026, 6, 3, 17, 0)
    # 21:00 in Anchorage is 05:00 UTC: the last start is 04:59 UTC
    assert is_open(US, zones, utc(2026, 6, 4, 4, 58))
    assert not is_open(US, zones, utc(2026, 6, 4, 4, 59, 30))
    coasts = ("America/New_York", "America/Los_Angeles")
    assert opens_at(US, coasts, utc(2026, 6, 3, 12, 0)) == utc(2026, 6, 3, 15, 0)  # 08:00 PDT
    assert not is_open(US, coasts, utc(2026, 6, 4, 0, 59, 30))  # 20:59:30 EDT


def test_zones_without_overlap_never_open() -> None:
    # Tokyo and New York are 13-14 hours apart: no instant is 09:00-12:00 in both (under us_tcpa, 13 hours
    # long, any two zones overlap somewhere: 24 - 13 < 13)
    mornings = CallingWindow(weekly={d: ("09:00-12:00",) for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")})
    assert opens_at(mornings, ("Asia/Tokyo", "America/New_York"), utc(2026, 6, 3, 12, 0)) is None
    assert opens_at(US, ("Asia/Tokyo", "America/New_York"), utc(2026, 6, 3, 12, 0)) == utc(2026, 6, 3, 23, 0)


def test_a_number_without_a_zone_uses_the_default() -> None:
    assert zones_for_number("+12125551234") == ("America/New_York",)
    assert zones_for_number("+15555551234") == ()  # Etc/Unknown is no zone
    assert zones_for_number("not a number") == ()
    prague = CallingWindow(
        weekly={d: ("09:00-17:00",) for d in ("mon", "tue", "wed", "thu", "fri")}, default_tz="Europe/Prague"
    )
    assert opens_at(prague, zones_for_number("+15555551234"), utc(2026, 6, 3, 5, 0)) == utc(2026, 6, 3, 7, 0)
    assert US.default_tz == "America/New_York" and FR.default_tz == "Europe/Paris"


def test_round_the_clock_is_one_stretch_across_midnight() -> None:
    always = CallingWindow(weekly={d: ("00:00-24:00",) for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")})
    assert is_open(always, (), utc(2026, 6, 3, 23, 59, 30))


@pytest.mark.parametrize(
    "bad",
    [
        {"weekly": {"mon": ("9:00-17:00",)}},
        {"weekly": {"mon": ("17:00-09:00",)}},
        {"weekly": {"mon": ("08:00-24:01",)}},
        {"weekly": {"monday": ("08:00-09:00",)}},
        {"weekly": {}},
        {},
        {"preset": "us_tcpa", "default_tz": "Mars/Olympus"},
        {"preset": "fr_2023", "holidays": {"country": "XX"}},
        {"preset": "fr_2023", "holidays": {"country": "FR", "subdiv": "ZZ"}},
        {"preset": "uk"},
        {"preset": "us_tcpa", "margin": 60},
    ],
)
def test_bad_windows_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CallingWindow.model_validate(bad)


def test_fields_beside_a_preset_win() -> None:
    w = CallingWindow(preset="fr_2023", margin_s=300, weekly={"sat": ("10:00-12:00",)})
    assert w.margin_s == 300 and w.holidays is not None and w.holidays.country == "FR"
    assert not is_open(w, (), local(PARIS, 2026, 6, 3, 11, 0))  # a Wednesday: only Saturday now
    assert is_open(w, (), local(PARIS, 2026, 6, 6, 11, 0))


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        opens_at(US, (), datetime(2026, 6, 3, 12, 0))


ZONES = [
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "America/Adak",
    "Pacific/Honolulu",
    "Europe/Paris",
    "Europe/London",
]


@settings(max_examples=60, deadline=None)
@given(
    now=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
    zones=st.lists(st.sampled_from(ZONES), max_size=2, unique=True),
    preset=st.sampled_from(["us_tcpa", "fr_2023"]),
)
def test_opens_at_is_never_before_now_and_always_open(now: datetime, zones: list[str], preset: str) -> None:
    window = CallingWindow.model_validate({"preset": preset})
    at = opens_at(window, tuple(zones), now)
    if at is None:
        return
    assert at >= now
    assert is_open(window, tuple(zones), at)
    for name in zones or [window.default_tz]:
        first = at.astimezone(ZoneInfo(name))
        last = (at + timedelta(seconds=window.margin_s)).astimezone(ZoneInfo(name))
        ranges = window.ranges()[first.weekday()]
        minute = first.hour * 60 + first.minute
        assert any(a <= minute and (last.hour * 60 + last.minute) <= b for a, b in ranges), (name, first)


def test_a_day_of_more_ranges_than_a_dial_should_walk_is_refused() -> None:
    many = (*(f"{h:02d}:00-{h:02d}:30" for h in range(24)), "23:40-23:50")
    with pytest.raises(ValidationError, match="at most 24 time ranges"):
        CallingWindow(weekly={"mon": many})
