"""Send pacing as pure values (time is an input): Cloud API throughput and Meta's pair limit."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RateBackoff:
    """The Cloud API throughput the sends may use: `rate` messages/s, halved for `backoff_s` after a 130429.
    The one token bucket that spends it is the dispatcher's (gateway/engine/dispatcher.py), which reads
    `current_rate` each turn; a second bucket here made a send held by the pair limit take two tokens."""

    rate: float
    backoff_s: float = 60.0
    slowed_until: float = 0.0

    def current_rate(self, now: float) -> float:
        return self.rate / 2 if now < self.slowed_until else self.rate

    def rate_limited(self, now: float) -> None:
        self.slowed_until = now + self.backoff_s


@dataclass
class PairLimit:
    """At most one message to one number every `interval_s` (Meta's pair rate limit)."""

    interval_s: float = 6.0
    last: dict[str, float] = field(default_factory=dict)

    def reserve(self, number: str, now: float) -> float:
        """Reserve the next slot for `number`; returns how long to wait for it."""
        at = max(now, self.last.get(number, -1e18) + self.interval_s)
        self.last[number] = at
        if len(self.last) > 100_000:  # forget numbers whose slot is long past
            self.last = {n: t for n, t in self.last.items() if t > now - self.interval_s}
        return at - now
