"""Predictive pacing (issue 25, docs/lawful-calling.md): how many calls to start now for a campaign.

Interface (`Pacer`): the shell feeds every observation of the campaign's calls and operators (`observe`)
and asks, on each dispatcher turn and at least once a second, `calls_to_place(now, operators_free,
operators_total, calls_in_flight)`. `calls_in_flight` counts calls started and neither connected to an
operator nor ended (ringing, or answered by a person waiting for an operator). The global and per-campaign
limits of SPEC §10 (cps, concurrency) still apply on top; the pacer never sees them.

- `ProgressivePacer`: one call per free operator not already covered by a call in flight. It never
  abandons (an operator is kept for every call).
- `PredictivePacer`, the method and why:
  * measured, not configured: the recent calls give the time from start to each outcome (a person, a
    machine (AMD hangs up: it never needs an operator), or no answer/busy/failure), the recent connected
    calls the handle time (connect to wrap-up done). From them: q(a, t), the chance that a call ringing
    for a seconds brings a person within the next t seconds, and f(e, t), the chance that an operator
    busy for e seconds is free within t. Both are conditional on age, so a call ringing for 18 s (likely
    to run to the ring timeout) counts for little and an operator 4 minutes into a call counts for much;
  * at each decision, over slices t of the next ring time (to the 95th percentile of the time to a
    person), demand A(t) = waiting persons + sum q(age_i, t) over ringing calls + n q(0, t) for n new
    calls, and supply S(t + g) = free operators + sum f(e_j, t + g) over busy ones, g = abandon_after_s.
    A call is abandoned when its person finds no operator within g, so the abandons of the horizon are
    about max_t (A(t) - S(t + g))+ (a loss system's overflow); with both sums treated as normal (sums of
    independent Bernoullis) E[(A - S)+] has a closed form. n is the largest number for which the expected
    overflow is at most r times the expected persons: a binomial/normal model per decision, in the
    spirit of Erlang-style staffing but built on the live, age-aware state instead of steady-state rates;
  * r tracks the setpoint (setpoint_ratio x max_abandon_rate, 90 % of 3 % by default) by stochastic
    approximation on the outcomes themselves: each connected person raises r's multiplier by eta, each
    abandon lowers it by eta (1 - s) / s; the multiplier settles where the measured rate equals the
    setpoint, which absorbs what the normal model gets wrong (timing within a slice, heavy tails);
  * the law's window has the last word: the pacer keeps the campaign's rolling abandonment
    (`AbandonRate`) and falls back to progressive (no abandons at all) when fewer than 2 abandons remain
    in its budget, and until it has seen `warmup_calls` outcomes and `warmup_handles` handle times.
  Why not VICIdial's adaptive dial level (bench/vicidial.py)? It steers one ratio, calls per agent,
  from the last 15 s of "agents waiting minus calls waiting", every 15 s, and cuts it (to 1, by half or
  tapered) once the day's drop rate is over target. It reacts after the fact and ignores which calls
  are about to answer and which operators are about to be free; its occupancy pays for that
  (docs/lawful-calling.md, the bench). An Erlang-C or Erlang-A steady-state model needs stationary
  arrival and handle rates and fits the average, not the moment.

Pure: no I/O, no clock (every call takes `now` or an observation's `at`). The pacer is a sans-IO object
(as the SIP cores): `observe` updates it in place; its state is bounded (samples in fixed-size deques,
calls and operators in flight).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.domain.abandonment import AbandonRate, AbandonWindow

# --- observations ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    call: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Answered:
    """A person (human=True, after AMD said so) or a machine answered. A machine ends the call."""

    call: str
    at: datetime
    human: bool


@dataclass(frozen=True, slots=True)
class NotAnswered:
    """The call ended before any answer: no answer within the ring time, busy, rejected, failed."""

    call: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Connected:
    """The person reached an operator."""

    call: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Abandoned:
    """The person reached no operator within abandon_after_s; the gateway played the prompt and hung up."""

    call: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Left:
    """The person hung up while waiting for an operator (`canceled_by_client`): no longer waiting, no
    abandon (the rate counts it as an answer, as the domain does), no operator taken."""

    call: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A connected call hung up; its operator is in wrap-up."""

    call: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Freed:
    """The operator who had `call` is free again (wrap-up done)."""

    call: str
    at: datetime


Observation = Placed | Answered | NotAnswered | Connected | Abandoned | Left | CallEnded | Freed


class Pacer(Protocol):
    def observe(self, obs: Observation) -> None: ...

    def calls_to_place(self, now: datetime, operators_free: int, operators_total: int, calls_in_flight: int) -> int: ...


def progressive(operators_free: int, calls_in_flight: int) -> int:
    return max(0, operators_free - calls_in_flight)


class ProgressivePacer:
    def observe(self, obs: Observation) -> None:
        pass

    def calls_to_place(self, now: datetime, operators_free: int, operators_total: int, calls_in_flight: int) -> int:
        return progressive(operators_free, calls_in_flight)


# --- the predictive pacer --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PacerSettings:
    max_abandon_rate: float = 0.03
    # aim at this share of max_abandon_rate (bench.predictive: 0.8 left 10 operators a point short of +20)
    setpoint_ratio: float = 0.9
    abandon_after_s: float = 2.0
    abandon_window: AbandonWindow = AbandonWindow.D30
    min_answers: int = 100  # AbandonRate.should_pause's minimum sample
    eta: float = 0.01  # the setpoint tracker's step
    warmup_calls: int = 30
    warmup_handles: int = 10
    call_samples: int = 1000
    handle_samples: int = 300
    slices: int = 6
    max_per_operator: int = 8  # calls in flight per logged-in operator, at most
    start_multiplier: float = 0.1  # below where the tracker settles in bench/predictive.py's days: it climbs
    budget_ease: float = 3.0  # below 1 + this many abandons left in the window, r shrinks to 0 linearly


class _Sorted:
    """The last `size` samples and a sorted copy made when asked after a change."""

    def __init__(self, size: int) -> None:
        self.items: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        self._dirty = False

    def add(self, x: float) -> None:
        self.items.append(x)
        self._dirty = True

    def sorted(self) -> list[float]:
        if self._dirty:
            self._sorted = sorted(self.items)
            self._dirty = False
        return self._sorted


class PredictivePacer:
    def __init__(self, settings: PacerSettings | None = None, history: AbandonRate | None = None) -> None:
        self.settings = s = settings or PacerSettings()
        self.rate = history if history is not None else AbandonRate(s.abandon_window)
        self.multiplier = s.start_multiplier
        self._throttled = True  # no growth of the multiplier while the budget holds the pacer back
        self._ringing: dict[str, datetime] = {}
        self._waiting: dict[str, datetime] = {}
        self._busy: dict[str, datetime] = {}
        self._outcome_all = _Sorted(s.call_samples)  # seconds from start to any outcome
        self._outcome_human = deque[tuple[float, bool]](maxlen=s.call_samples)
        self._human_sorted: list[float] = []
        self._human_dirty = False
        self._handles = _Sorted(s.handle_samples)

    # observations

    def observe(self, obs: Observation) -> None:
        s = self.settings
        if isinstance(obs, Placed):
            self._ringing[obs.call] = obs.at
        elif isinstance(obs, Answered | NotAnswered):
            placed = self._ringing.pop(obs.call, None)
            human = isinstance(obs, Answered) and obs.human
            if placed is not None:
                took = max(0.0, (obs.at - placed).total_seconds())
                self._outcome_all.add(took)
                self._outcome_human.append((took, human))
                self._human_dirty = True
            if human:
                self._waiting[obs.call] = obs.at
        elif isinstance(obs, Connected):
            self._waiting.pop(obs.call, None)
            self._busy[obs.call] = obs.at
            self.rate = self.rate.record_answer(obs.at)
            if not self._throttled:
                self.multiplier = min(50.0, self.multiplier * math.exp(s.eta))
        elif isinstance(obs, Abandoned):
            self._waiting.pop(obs.call, None)
            self.rate = self.rate.record_abandon(obs.at)
            target = self._setpoint()
            self.multiplier = max(0.02, self.multiplier * math.exp(-s.eta * (1 - target) / target))
        elif isinstance(obs, Left):
            self._waiting.pop(obs.call, None)
            self.rate = self.rate.record_answer(obs.at)
        elif isinstance(obs, Freed):
            connected = self._busy.pop(obs.call, None)
            if connected is not None:
                self._handles.add(max(0.0, (obs.at - connected).total_seconds()))

    # the decision

    def calls_to_place(self, now: datetime, operators_free: int, operators_total: int, calls_in_flight: int) -> int:
        s = self.settings
        floor = progressive(operators_free, calls_in_flight)
        budget = self.rate.budget(now, s.max_abandon_rate, s.min_answers)
        throttle = min(1.0, max(0.0, (budget - 1) / s.budget_ease))
        self._throttled = throttle < 1.0
        if (
            len(self._outcome_all.items) < s.warmup_calls
            or len(self._handles.items) < s.warmup_handles
            or self.rate.counts(now)[0] < s.min_answers
        ):
            return floor
        if throttle <= 0:
            return floor
        waiting = min(len(self._waiting), calls_in_flight)
        ringing = _ages(self._ringing, now, calls_in_flight - waiting)
        busy = _ages(self._busy, now, max(0, operators_total - operators_free))
        model = self._model(ringing, busy, waiting, operators_free)
        r = self._setpoint() * self.multiplier * throttle
        most = max(0, operators_total * s.max_per_operator - calls_in_flight)

        def ok(n: int) -> bool:
            return _overflow(model, n) <= r * _demand(model, n)

        if most == 0 or not ok(0):
            return floor
        lo, hi = 0, 1  # ok(lo) holds; find the largest n <= most with ok(n)
        while hi <= most and ok(hi):
            lo, hi = hi, hi * 2
        hi = min(hi, most + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return max(lo, floor)

    # ---

    def _setpoint(self) -> float:
        return self.settings.setpoint_ratio * self.settings.max_abandon_rate

    def _human_times(self) -> list[float]:
        if self._human_dirty:
            self._human_sorted = sorted(t for t, human in self._outcome_human if human)
            self._human_dirty = False
        return self._human_sorted

    def _model(self, ringing: list[float], busy: list[float], waiting: int, free: int) -> list[_Slice]:
        s = self.settings
        every = self._outcome_all.sorted()
        humans = self._human_times()
        handles = self._handles.sorted()
        curve = _survival(handles, busy)
        mean_handle = sum(handles) / len(handles) if handles else 120.0
        far = humans[min(len(humans) - 1, int(0.95 * len(humans)))] if humans else 10.0
        step = max(far, 1.0) / s.slices
        g = s.abandon_after_s
        out = []
        for k in range(1, s.slices + 1):
            t = step * k
            qs = [_cond(every, humans, a, t) for a in ringing]
            fs = [_free_within(curve, e, t + g, mean_handle) for e in busy]
            q0 = _cond(every, humans, 0.0, t)
            out.append(
                _Slice(
                    mean=waiting + sum(qs) - free - sum(fs),
                    var=sum(q * (1 - q) for q in qs) + sum(f * (1 - f) for f in fs),
                    demand=waiting + sum(qs),
                    q0=q0,
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class _Slice:
    mean: float  # E[A - S] without new calls
    var: float
    demand: float  # E[A] without new calls
    q0: float  # a new call's chance of bringing a person within the slice


def _overflow(model: list[_Slice], n: int) -> float:
    worst = 0.0
    for sl in model:
        mu = sl.mean + n * sl.q0
        sigma = math.sqrt(sl.var + n * sl.q0 * (1 - sl.q0))
        worst = max(worst, _positive_part(mu, sigma))
    return worst


def _demand(model: list[_Slice], n: int) -> float:
    last = model[-1]
    return last.demand + n * last.q0


def _positive_part(mu: float, sigma: float) -> float:
    """E[max(X, 0)] for X ~ N(mu, sigma^2)."""
    if sigma < 1e-9:
        return max(mu, 0.0)
    z = mu / sigma
    return mu * 0.5 * math.erfc(-z / math.sqrt(2)) + sigma * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _cond(every: list[float], humans: list[float], age: float, t: float) -> float:
    """P(a person answers within (age, age + t] | no outcome by age), from the samples."""
    alive = len(every) - bisect.bisect_right(every, age)
    if alive <= 0:
        return 0.0
    hits = bisect.bisect_right(humans, age + t) - bisect.bisect_right(humans, age)
    return min(1.0, hits / alive)


def _survival(done: list[float], censored: list[float]) -> tuple[list[float], list[float]]:
    """Kaplan-Meier: the handle times finished (`done`) and the elapsed times of the operators still busy
    (`censored`: at least that long). Without the censored ones the first minutes of a campaign would see
    only the short calls (they finish first) and believe every operator is about to be free."""
    marks = sorted([(x, 1) for x in done] + [(x, 0) for x in censored])
    at_risk = len(marks)
    times: list[float] = []
    surv: list[float] = []
    s = 1.0
    i = 0
    while i < len(marks):
        x = marks[i][0]
        deaths = removed = 0
        while i < len(marks) and marks[i][0] == x:
            deaths += marks[i][1]
            removed += 1
            i += 1
        if deaths:
            s *= 1 - deaths / at_risk
            times.append(x)
            surv.append(s)
        at_risk -= removed
    return times, surv


def _s_at(curve: tuple[list[float], list[float]], x: float) -> float:
    times, surv = curve
    i = bisect.bisect_right(times, x)
    return 1.0 if i == 0 else surv[i - 1]


def _free_within(curve: tuple[list[float], list[float]], elapsed: float, t: float, mean: float) -> float:
    """P(an operator busy for `elapsed` s is free within t s) from the survival curve; past its reach (no
    handle time that long seen yet), as if memoryless with the mean."""
    alive = _s_at(curve, elapsed)
    if alive <= 0.02:
        return 1 - math.exp(-t / max(mean, 1.0))
    return min(1.0, max(0.0, 1 - _s_at(curve, elapsed + t) / alive))


def _ages(started: dict[str, datetime], now: datetime, count: int) -> list[float]:
    """Ages in seconds of the `count` youngest tracked items; missing ones (not observed) are new."""
    ages = sorted(max(0.0, (now - t).total_seconds()) for t in started.values())[: max(0, count)]
    return ages + [0.0] * (max(0, count) - len(ages))
