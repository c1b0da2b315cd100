"""A campaign's abandonment rate over a rolling window (issue 25, docs/lawful-calling.md).

Rules:
- an abandoned call is a live-answered call (a person, not a machine) that reached no operator within
  `abandon_after_s` (2 s): the gateway played `abandon_prompt` and hung up;
- every live-answered call is recorded once, when its fate is known: `record_answer` (it reached an
  operator) or `record_abandon` (it did not; it counts as answered too). rate = abandoned / answered, as
  the TSR safe harbour (16 CFR 310.4(b)(4)) and Ofcom compute it;
- the window is `24h` (counted in 5-minute buckets) or `30d` (1-hour buckets): the current bucket and
  the ones before it up to the window's length, so the state is bounded (288 or 720 buckets) and the
  window is between one bucket shorter than its length and its length;
- `should_pause(now, max_rate, min_answers)`: abandoned > max_rate x max(answered, min_answers). Below
  `min_answers` answered calls a campaign pauses only when its abandons alone already exceed the budget of
  a full minimum sample (with min_answers 100 and 3 %: a 4th abandon), never on the noise of 1 in 2;
- `budget(now, max_rate, min_answers)` is how many more abandons the window takes before should_pause;
- serialisable to and from a small dict (stored per campaign): `to_dict()`, `AbandonRate.from_dict(d)`.

Pure: a frozen value; every method takes `now` and returns a new value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any


class AbandonWindow(StrEnum):
    H24 = "24h"
    D30 = "30d"


_SHAPE = {AbandonWindow.H24: (86400, 300), AbandonWindow.D30: (30 * 86400, 3600)}  # length, bucket (s)


@dataclass(frozen=True, slots=True)
class AbandonRate:
    window: AbandonWindow = AbandonWindow.D30
    buckets: tuple[tuple[int, int, int], ...] = ()  # (bucket index, answered, abandoned), oldest first

    def record_answer(self, now: datetime) -> AbandonRate:
        return self._add(now, 1, 0)

    def record_abandon(self, now: datetime) -> AbandonRate:
        return self._add(now, 1, 1)

    def counts(self, now: datetime) -> tuple[int, int]:
        """(answered, abandoned) within the window at `now`."""
        first = self._first(now)
        answered = abandoned = 0
        for index, ans, ab in self.buckets:
            if index >= first:
                answered += ans
                abandoned += ab
        return answered, abandoned

    def rate(self, now: datetime) -> float:
        answered, abandoned = self.counts(now)
        return abandoned / answered if answered else 0.0

    def should_pause(self, now: datetime, max_rate: float, min_answers: int = 100) -> bool:
        answered, abandoned = self.counts(now)
        return abandoned > max_rate * max(answered, min_answers)

    def budget(self, now: datetime, max_rate: float, min_answers: int = 100) -> float:
        """Abandons the window still takes at `now` before should_pause (may be negative)."""
        answered, abandoned = self.counts(now)
        return max_rate * max(answered, min_answers) - abandoned

    def to_dict(self) -> dict[str, Any]:
        return {"window": self.window.value, "buckets": [list(b) for b in self.buckets]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AbandonRate:
        window = AbandonWindow(data.get("window", AbandonWindow.D30))
        rows = []
        for row in data.get("buckets", ()):
            index, answered, abandoned = (int(x) for x in row)
            if answered < 0 or abandoned < 0 or abandoned > answered:
                raise ValueError(f"bad abandonment bucket {row!r}")
            rows.append((index, answered, abandoned))
        return cls(window, tuple(sorted(rows)))

    # ---

    def _index(self, now: datetime) -> int:
        return int(now.timestamp()) // _SHAPE[self.window][1]

    def _first(self, now: datetime) -> int:
        length, bucket = _SHAPE[self.window]
        return self._index(now) - length // bucket + 1

    def _add(self, now: datetime, answered: int, abandoned: int) -> AbandonRate:
        index, first = self._index(now), self._first(now)
        kept = [b for b in self.buckets if b[0] >= first]
        if index < first:  # a late record already outside the window
            return replace(self, buckets=tuple(kept))
        if kept and kept[-1][0] == index:
            _, ans, ab = kept[-1]
            kept[-1] = (index, ans + answered, ab + abandoned)
        elif kept and kept[-1][0] > index:  # a late record for an older bucket: merge it where it belongs
            for i, (idx, ans, ab) in enumerate(kept):
                if idx == index:
                    kept[i] = (idx, ans + answered, ab + abandoned)
                    break
                if idx > index:
                    kept.insert(i, (index, answered, abandoned))
                    break
        else:
            kept.append((index, answered, abandoned))
        return replace(self, buckets=tuple(kept))
