"""The pacers (gateway/domain/pacer.py, bench/vicidial.py) with a fake clock and scripted observations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.vicidial import VicidialAdaptive
from gateway.domain.abandonment import AbandonRate
from gateway.domain.pacer import (
    Abandoned,
    Answered,
    CallEnded,
    Connected,
    Freed,
    NotAnswered,
    PacerSettings,
    Placed,
    PredictivePacer,
    ProgressivePacer,
)

T0 = datetime(2026, 6, 3, 9, 0, tzinfo=UTC)


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def warmed(pacer: PredictivePacer, calls: int = 400) -> datetime:
    """A history: one call every 2 s, each 4th a person at 8 s, each 8th a machine, the rest no answer at
    25 s; every person connected and freed 100 s later. Returns the time after it."""
    for i in range(calls):
        t = 2.0 * i
        c = f"h{i}"
        pacer.observe(Placed(c, s(t)))
        if i % 4 == 0:
            pacer.observe(Answered(c, s(t + 8), human=True))
            pacer.observe(Connected(c, s(t + 8)))
            pacer.observe(CallEnded(c, s(t + 98)))
            pacer.observe(Freed(c, s(t + 108)))
        elif i % 8 == 1:
            pacer.observe(Answered(c, s(t + 8), human=False))
        else:
            pacer.observe(NotAnswered(c, s(t + 25)))
    return s(2.0 * calls + 200)


def test_progressive_keeps_one_call_per_free_operator() -> None:
    p = ProgressivePacer()
    assert p.calls_to_place(T0, operators_free=3, operators_total=5, calls_in_flight=1) == 2
    assert p.calls_to_place(T0, operators_free=1, operators_total=5, calls_in_flight=4) == 0


def test_predictive_is_progressive_until_it_has_measured_enough() -> None:
    p = PredictivePacer()
    assert p.calls_to_place(T0, 10, 10, 0) == 10
    for i in range(20):
        p.observe(Placed(f"c{i}", T0))
        p.observe(NotAnswered(f"c{i}", s(25)))
    assert p.calls_to_place(s(30), 10, 10, 0) == 10


def test_predictive_dials_ahead_of_free_operators_once_measured() -> None:
    p = PredictivePacer()
    now = warmed(p)
    # a quarter of the calls bring a person: with 10 operators free and nothing ringing it calls more
    n = p.calls_to_place(now, operators_free=10, operators_total=10, calls_in_flight=0)
    assert n > 10
    # every operator just connected, nobody free: nothing to call for yet
    for j in range(10):
        p.observe(Connected(f"busy{j}", now))
    assert p.calls_to_place(now, operators_free=0, operators_total=10, calls_in_flight=0) == 0
    # 90 s into their calls (handle time 100 s), some are about to be free: it calls ahead of them
    assert p.calls_to_place(now + timedelta(seconds=90), operators_free=0, operators_total=10, calls_in_flight=0) > 0


def test_calls_in_flight_count_against_the_next_calls() -> None:
    p = PredictivePacer()
    now = warmed(p)
    alone = p.calls_to_place(now, 10, 10, 0)
    for j in range(alone):
        p.observe(Placed(f"x{j}", now))
    assert p.calls_to_place(now + timedelta(seconds=1), 10, 10, alone) <= 1


def test_an_empty_budget_falls_back_to_progressive() -> None:
    p = PredictivePacer()
    now = warmed(p)  # 100 persons connected
    for i in range(3):  # 3 abandons of 103: at most 0.09 more before 3 %
        p.observe(Answered(f"a{i}", now, human=True))
        p.observe(Abandoned(f"a{i}", now))
    assert p.rate.budget(now, 0.03) < 1
    assert p.calls_to_place(now, 10, 10, 3) == 7


def test_the_setpoint_tracker_moves_with_the_outcomes() -> None:
    history = AbandonRate()
    for _ in range(1000):
        history = history.record_answer(T0)
    p = PredictivePacer(PacerSettings(start_multiplier=1.0), history=history)
    now = warmed(p)
    p.calls_to_place(now, 10, 10, 0)  # a budget of 30 abandons: nothing holds it back
    before = p.multiplier
    p.observe(Answered("a", now, human=True))
    p.observe(Connected("a", now))
    assert p.multiplier > before
    p.observe(Answered("b", now, human=True))
    p.observe(Abandoned("b", now + timedelta(seconds=2)))
    assert p.multiplier < before
    assert p.rate.counts(now + timedelta(seconds=2))[1] == 1


def test_state_is_bounded() -> None:
    p = PredictivePacer(PacerSettings(call_samples=50, handle_samples=20))
    warmed(p, calls=2000)
    assert len(p._outcome_all.items) == 50 and len(p._handles.items) == 20
    assert not p._ringing and not p._waiting


def test_vicidial_raises_its_level_while_agents_wait_and_drops_it_over_target() -> None:
    v = VicidialAdaptive("ADAPT_HARD_LIMIT")
    for sec in range(31):  # agents idle for 30 s: two evaluations, each doubling the level, capped at 3
        v.calls_to_place(s(sec), operators_free=10, operators_total=10, calls_in_flight=0)
    assert v.level == 3.0
    assert v.calls_to_place(s(31), 10, 10, 5) == 25  # level x (ready + incall) - active calls
    for i in range(60):  # 60 answered today, 6 dropped: 10 % > 3 %
        v.observe(Answered(f"p{i}", s(40), human=True))
        v.observe(Abandoned(f"p{i}", s(42)) if i % 10 == 0 else Connected(f"p{i}", s(40)))
    for sec in range(31, 62):
        v.calls_to_place(s(sec), 10, 10, 0)
    assert v.level == 1.0


def test_vicidial_tapered_cuts_by_the_hours_left() -> None:
    v = VicidialAdaptive("ADAPT_TAPERED", latest_hhmm=2100, start_level=2.0)
    for i in range(60):
        v.observe(Answered(f"p{i}", s(0), human=True))
        v.observe(Abandoned(f"p{i}", s(2)) if i % 10 == 0 else Connected(f"p{i}", s(0)))
    # 15:00: 600 "HHMM" left of 1000 -> x 0.6; agents all busy and nobody waiting: differential 0
    for sec in range(6 * 3600, 6 * 3600 + 16):
        v.calls_to_place(s(sec), operators_free=0, operators_total=10, calls_in_flight=0)
    assert abs(v.level - 1.2) < 1e-9
