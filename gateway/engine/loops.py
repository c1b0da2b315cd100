"""One policy for a store failure in a background loop (issue 23).

A loop's turn that fails with a StoreError (the database restarting, a disk full, a compare-and-set
conflict given up) committed nothing: the loop logs it — once per streak of failures, with their count
when the streak ends — and tries again after a delay that doubles from `first_s` to `max_s`. Anything
else is a bug and is not caught here: it ends the loop's task, and so the service, as a supervisor
expects. The dispatcher, the scheduler, the gauges and housekeeping all follow it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("telgate.loops")


@dataclass
class StoreBackoff:
    loop: str
    first_s: float = 0.5
    max_s: float = 10.0
    failures: int = 0

    def failed(self, exc: BaseException) -> float:
        """A turn failed: how long to wait before the next one."""
        if self.failures == 0:
            log.warning("store failure in a background loop, retrying", extra={"loop": self.loop, "detail": repr(exc)})
        self.failures += 1
        return min(self.max_s, self.first_s * 2.0 ** min(self.failures - 1, 16))

    def ok(self) -> None:
        """A turn succeeded: the streak (if any) is over."""
        if self.failures:
            log.info("background loop recovered", extra={"loop": self.loop, "failed_turns": self.failures})
            self.failures = 0
