"""Retry policy (SPEC §2 retry, §4 dial/send policy) and the per-contact settings that ride on it."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

VOICE_RETRYABLE = ("rejected", "unreachable", "failed")


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts: int = Field(3, ge=1, le=100)
    delays_s: tuple[float, ...] = Field((300.0, 900.0), max_length=100)
    retry_on: tuple[str, ...] = ("rejected", "unreachable")
    ring_timeout_s: float | None = Field(None, gt=0, le=600)

    def delay_after(self, attempt: int) -> float:
        """Delay before attempt `attempt + 1`; the last delay repeats."""
        if not self.delays_s:
            return 0.0
        return self.delays_s[min(max(attempt, 1) - 1, len(self.delays_s) - 1)]

    def retry_at(self, attempt: int, now: datetime, at_least_s: float = 0.0) -> datetime:
        return now + timedelta(seconds=max(self.delay_after(attempt), at_least_s))
