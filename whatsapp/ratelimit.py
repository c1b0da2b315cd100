"""Send pacing as pure values (time is an input): Cloud API throughput and Meta's pair limit."""

from __future__ import annotations

from dataclasses import dataclass, field

EPSILON = 1e-9


@dataclass
class SendLimiter:
    """A token bucket at `rate` messages/s that halves for `backoff_s` after a 130429."""

    rate: float
    burst: float = 1.0
    backoff_s: float = 60.0
    tokens: float = 1.0
    stamp: float | None = None
    slowed_until: float = 0.0

    def current_rate(self, now: float) -> float:
        return self.rate / 2 if now < self.slowed_until else self.rate

    def _refill(self, now: float) -> None:
        if self.stamp is not None and now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.current_rate(now))
        if self.stamp is None or now > self.stamp:
            self.stamp = now

    def delay(self, now: float) -> float:
        """Seconds until one message may go; 0 means now (and the token is taken)."""
        self._refill(now)
        if self.tokens >= 1 - EPSILON:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.current_rate(now)

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
