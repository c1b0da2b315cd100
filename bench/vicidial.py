"""VICIdial's adaptive predictive dial level, for comparison with telgate's pacer (bench/predictive.py).

A transcription of the rules of VICIdial's `bin/AST_VDadapt.pl` (sub count_agents_lines, sub
calculate_dial_level) and of how `AST_VDauto_dial.pl` turns the level into calls, behind telgate's
`Pacer` interface:

- every second: a sample of agents READY (free), calls LIVE (a person waiting for an agent) and agents
  logged in; the last 15 samples are averaged; differential = ready_avg - waiting_avg;
- every 15 s: level <- level x (1 + (differential + dl_diff_target) / agents_avg), with the intensity
  setting (0 by default: differential as is; > 0 scales a rise by (1 + i/100), a fall by |i/100 - 1|);
  capped at `max_level` (adaptive_maximum_level, 3.0) and raised to 1.0 when lower;
- drop rules: more than 20 calls in the last minute with more than 50 % dropped halves the level; more
  than 50 answered today with the day's drop percentage over `drop_pct` (adaptive_dropped_percentage):
  ADAPT_HARD_LIMIT sets 1.0, ADAPT_AVERAGE halves, ADAPT_TAPERED multiplies by
  (latest_hhmm - now_hhmm) / 1000 (1 when more than 10 "hours" are left, in VICIdial's HHMM arithmetic)
  and sets 1.0 past `latest_hhmm` (adaptive_latest_server_time); the level is never below 1.0;
- calls: goal = round(level x agents) with agents = READY + INCALL (available_only_ratio_tally N, the
  default) or READY alone (Y, plus the calls connected); calls to place = goal - active calls (ringing,
  waiting, connected).

Drops are counted as a share of answered calls (VICIdial since 61215). The pure core takes `now` as
everything else here; "today" starts at the first call it sees (one simulated day).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from gateway.domain.pacer import (
    Abandoned,
    Answered,
    CallEnded,
    Connected,
    Left,
    NotAnswered,
    Observation,
)

Method = Literal["ADAPT_HARD_LIMIT", "ADAPT_TAPERED", "ADAPT_AVERAGE"]


class VicidialAdaptive:
    def __init__(
        self,
        method: Method = "ADAPT_TAPERED",
        drop_pct: float = 3.0,
        max_level: float = 3.0,
        intensity: float = 0.0,
        dl_diff_target: float = 0.0,
        latest_hhmm: int = 2100,
        start_level: float = 1.0,
        available_only: bool = False,
        hhmm: Callable[[datetime], int] = lambda now: now.hour * 100 + now.minute,
    ) -> None:
        self.method = method
        self.drop_pct = drop_pct
        self.max_level = max_level
        self.intensity = intensity
        self.dl_diff_target = dl_diff_target
        self.latest_hhmm = latest_hhmm
        self.level = start_level
        self.available_only = available_only
        self._hhmm = hhmm
        self._waiting: set[str] = set()
        self._talking: set[str] = set()
        self._samples: deque[tuple[int, int, int]] = deque(maxlen=15)  # ready, waiting, agents
        self._next_sample: float | None = None
        self._next_level: float | None = None
        self._answered: list[tuple[float, bool]] = []  # (time, dropped), today
        self.levels: list[tuple[float, float]] = []  # (time, level) after each evaluation

    def observe(self, obs: Observation) -> None:
        if isinstance(obs, Answered) and obs.human:
            self._waiting.add(obs.call)
        elif isinstance(obs, Connected):
            self._waiting.discard(obs.call)
            self._talking.add(obs.call)
            self._answered.append((obs.at.timestamp(), False))
        elif isinstance(obs, Abandoned):
            self._waiting.discard(obs.call)
            self._answered.append((obs.at.timestamp(), True))
        elif isinstance(obs, Left):
            self._waiting.discard(obs.call)
        elif isinstance(obs, CallEnded):
            self._talking.discard(obs.call)
        elif isinstance(obs, NotAnswered):
            pass

    def calls_to_place(self, now: datetime, operators_free: int, operators_total: int, calls_in_flight: int) -> int:
        t = now.timestamp()
        if self._next_sample is None:
            self._next_sample, self._next_level = t, t + 15
        while self._next_sample is not None and t >= self._next_sample:
            self._samples.append((operators_free, len(self._waiting), operators_total))
            self._next_sample += 1
        if self._next_level is not None and t >= self._next_level:
            self._evaluate(now)
            self._next_level = t + 15
        talking = len(self._talking)
        agents = operators_free if self.available_only else operators_free + talking
        goal = round(self.level * agents) + (talking if self.available_only else 0)
        return max(0, goal - (calls_in_flight + talking))

    def _evaluate(self, now: datetime) -> None:
        t = now.timestamp()
        n = len(self._samples)
        ready_avg = sum(s[0] for s in self._samples) / n
        waiting_avg = sum(s[1] for s in self._samples) / n
        agents_avg = sum(s[2] for s in self._samples) / n
        if agents_avg <= 0:
            return
        diff_mul = (ready_avg - waiting_avg + self.dl_diff_target) / agents_avg
        i = self.intensity / 100
        diff = diff_mul * (abs(i - 1) if diff_mul < 0 else (i + 1))
        level = min(self.level * (1 + diff), self.max_level)
        level = max(level, 1.0)
        one = [d for at, d in self._answered if at > t - 60]
        if len(one) > 20 and 100 * sum(one) / len(one) > 50:
            level /= 2
        today = len(self._answered)
        if today > 50 and 100 * sum(d for _, d in self._answered) / today > self.drop_pct:
            if self.method == "ADAPT_HARD_LIMIT":
                level = 1.0
            elif self.method == "ADAPT_AVERAGE":
                level /= 2
            else:
                left = self.latest_hhmm - self._hhmm(now)
                level = 1.0 if left < 0 else level * (1.0 if left > 1000 else left / 1000)
        self.level = max(level, 1.0)
        self.levels.append((t, self.level))
