"""A campaign's rolling abandonment rate (gateway/domain/abandonment.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain.abandonment import AbandonRate, AbandonWindow

T0 = datetime(2026, 6, 3, 9, 0, tzinfo=UTC)


def fill(rate: AbandonRate, answered: int, abandoned: int, at: datetime = T0) -> AbandonRate:
    for _ in range(answered - abandoned):
        rate = rate.record_answer(at)
    for _ in range(abandoned):
        rate = rate.record_abandon(at)
    return rate


def test_rate_is_abandoned_over_live_answered() -> None:
    r = fill(AbandonRate(), 200, 5)
    assert r.counts(T0) == (200, 5)
    assert r.rate(T0) == pytest.approx(0.025)
    assert AbandonRate().rate(T0) == 0.0


def test_no_pause_on_noise_below_the_minimum_sample() -> None:
    assert not fill(AbandonRate(), 2, 1).should_pause(T0, 0.03)  # 1 of 2: 50 %, but 1 <= 3 % of 100
    assert not fill(AbandonRate(), 10, 3).should_pause(T0, 0.03)
    assert fill(AbandonRate(), 10, 4).should_pause(T0, 0.03)  # 4 > 3: a full sample could not mend it
    assert not fill(AbandonRate(), 1000, 30).should_pause(T0, 0.03)
    assert fill(AbandonRate(), 1000, 31).should_pause(T0, 0.03)
    assert fill(AbandonRate(), 2, 1).should_pause(T0, 0.03, min_answers=1)
    assert fill(AbandonRate(), 10, 1).budget(T0, 0.03) == pytest.approx(2.0)
    assert fill(AbandonRate(), 1000, 31).budget(T0, 0.03) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("window", "gone_after"), [(AbandonWindow.H24, timedelta(hours=24)), (AbandonWindow.D30, timedelta(days=30))]
)
def test_old_calls_leave_the_window(window: AbandonWindow, gone_after: timedelta) -> None:
    r = fill(AbandonRate(window), 100, 10)
    r = fill(r, 100, 0, T0 + gone_after / 2)
    assert r.counts(T0 + gone_after / 2) == (200, 10)
    assert r.counts(T0 + gone_after) == (100, 0)
    assert r.record_answer(T0 + gone_after * 2).buckets == ((r._index(T0 + gone_after * 2), 1, 0),)


def test_state_is_bounded() -> None:
    r = AbandonRate(AbandonWindow.D30)
    for minute in range(0, 60 * 24 * 60, 7):  # 60 days, a call every 7 minutes
        r = r.record_answer(T0 + timedelta(minutes=minute))
    assert len(r.buckets) <= 720
    r24 = AbandonRate(AbandonWindow.H24)
    for minute in range(0, 60 * 48):
        r24 = r24.record_abandon(T0 + timedelta(minutes=minute))
    assert len(r24.buckets) <= 288


def test_late_records_land_in_their_bucket_or_nowhere() -> None:
    r = fill(AbandonRate(AbandonWindow.H24), 3, 0, T0 + timedelta(hours=2))
    r = r.record_abandon(T0)  # late, still inside the window
    assert r.counts(T0 + timedelta(hours=2)) == (4, 1)
    assert [b[0] for b in r.buckets] == sorted(b[0] for b in r.buckets)
    r = r.record_abandon(T0 - timedelta(days=2))  # already outside: ignored
    assert r.counts(T0 + timedelta(hours=2)) == (4, 1)


def test_round_trips_through_a_small_dict() -> None:
    r = fill(fill(AbandonRate(AbandonWindow.H24), 7, 2), 5, 1, T0 + timedelta(minutes=30))
    d = r.to_dict()
    assert d == {"window": "24h", "buckets": [[r.buckets[0][0], 7, 2], [r.buckets[1][0], 5, 1]]}
    assert AbandonRate.from_dict(d) == r
    with pytest.raises(ValueError):
        AbandonRate.from_dict({"window": "24h", "buckets": [[1, 1, 2]]})
    with pytest.raises(ValueError):
        AbandonRate.from_dict({"window": "7d", "buckets": []})
