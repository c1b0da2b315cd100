"""Attempt caps per number (gateway/domain/limits.py): attempts per window, refusals, opt-outs, abandons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from gateway.domain.limits import Blocked, Limits, NumberHistory, check, lookback

NOW = datetime(2026, 6, 3, 12, 0, tzinfo=UTC)
FR = Limits(preset="fr_2023")


def days(n: float) -> timedelta:
    return timedelta(days=n)


def test_the_fr_2023_preset() -> None:
    assert (FR.max_attempts, FR.per_days, FR.after_refusal_days, FR.after_abandon_h) == (4, 30, 60, 72)
    assert Limits(preset="fr_2023", max_attempts=2).max_attempts == 2  # a field beside the preset wins
    assert Limits().max_attempts is None  # without a preset only the 72 h after an abandon holds


def test_at_most_n_attempts_in_d_days() -> None:
    three = NumberHistory(attempts=(NOW - days(29), NOW - days(10), NOW - days(1)))
    assert check(FR, three, NOW) is None
    four = NumberHistory(attempts=(NOW - days(1), NOW - days(29), NOW - days(10), NOW - days(2)))
    assert check(FR, four, NOW) == Blocked(NOW + days(1), "max_attempts")  # when the 29-day-old one falls out
    assert check(FR, four, NOW + days(1)) is None
    old = NumberHistory(attempts=(NOW - days(31), NOW - days(30), NOW - days(2), NOW - days(1), NOW - days(3)))
    assert check(FR, old, NOW) is None  # an attempt exactly 30 days old no longer counts
    six = NumberHistory(attempts=tuple(NOW - days(d) for d in (1, 2, 3, 4, 5, 6)))
    blocked = check(FR, six, NOW)  # 6 in the window: 3 must fall out, the 3rd oldest (4 days) last
    assert blocked == Blocked(NOW - days(4) + days(30), "max_attempts")


def test_refusal_opt_out_and_abandon_holds() -> None:
    assert check(FR, NumberHistory(last_refusal=NOW - days(59)), NOW) == Blocked(NOW + days(1), "after_refusal")
    assert check(FR, NumberHistory(last_refusal=NOW - days(60)), NOW) is None
    abandoned = NumberHistory(last_abandon=NOW - timedelta(hours=70))
    assert check(Limits(), abandoned, NOW) == Blocked(NOW + timedelta(hours=2), "after_abandon")
    assert check(Limits(after_abandon_h=None), abandoned, NOW) is None
    opted_out = NumberHistory(last_opt_out=NOW - days(5))
    assert check(Limits(), opted_out, NOW) is None  # off unless set (for good: the blacklist)
    assert check(Limits(after_opt_out_days=30), opted_out, NOW) == Blocked(NOW + days(25), "after_opt_out")


def test_the_latest_hold_wins() -> None:
    history = NumberHistory(
        attempts=tuple(NOW - days(d) for d in (1, 2, 3, 4)),
        last_refusal=NOW - days(2),
        last_abandon=NOW - timedelta(hours=1),
    )
    assert check(FR, history, NOW) == Blocked(NOW + days(58), "after_refusal")
    assert check(FR, history, NOW + days(58)) is None


def test_lookback() -> None:
    assert lookback(FR) == days(30)
    assert lookback(Limits()) == days(0)


@pytest.mark.parametrize(
    "bad",
    [{"max_attempts": 0}, {"per_days": 0}, {"after_abandon_h": -1}, {"preset": "uk"}, {"max": 3}],
)
def test_bad_limits_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Limits.model_validate(bad)
