"""Whether each PBX answers, from every piece of SIP evidence (sans-IO: `now` in, timers and events out).

The rules (issue 23, SPEC §5.3), per PBX of `sip.pbx`:
- **Up** at start, and up again on **any SIP response** from it: to an OPTIONS, to an INVITE (a
  provisional or a final, a 4xx or 5xx too), to a REGISTER or an in-dialog request. It answered.
- **Probes**: an OPTIONS keepalive every `interval_s` (`ProbeDue`), the first one an interval after
  `start`. `interval_s = 0` turns them off (as Asterisk's `qualify_frequency = 0`): health then comes
  from call traffic alone. A dropped TCP/TLS connection asks for one at once (`link_lost`, at most one
  per `REPROBE_AT_MOST_EVERY_S`), which also re-opens the connection.
- **Silence**: a probe with no response by the next probe (or by its own Timer F, whichever is first), a
  request with no response at all (INVITE Timer B, a non-INVITE's Timer F), a transport error: each
  counts once; any response resets the count.
- **Down (silent)** when `SILENT_DOWN` silences are in a row *and* they span at least 3 intervals since
  the last response (or the start): a dead PBX is down 3 intervals after it last answered, as before, and
  one that answers calls but ignores OPTIONS (many carriers and SBCs) never is. With `interval_s = 0`,
  `SILENT_DOWN` requests in a row with no response at all (each already waited its Timer B or F).
- **Down (failing)** after `FAILED_DIALS_DOWN` dials in a row ended `failed` (SPEC §5.3's "5 failed
  dials"): it may answer, but it does not take our calls (503, 403, 488 to everything, or Timer B). Up
  again on an answered probe or a dial that did not fail, *not* on the late answers to calls it already
  failed (those would bring it straight back).
- **Down at once** on a TLS certificate it shows (it will keep showing it), and, with several PBXs, on a
  connection that cannot be made (new calls go to the next one at once). With one PBX a refused
  connection is one silence (and each queued INVITE's `failed`).
- While down it is still probed, so that its next answer brings it back. `WentDown.all_down` says that
  no PBX is up any more: the owner pauses the voice campaigns then (they stay paused until resumed).

Evidence about an address that is not one of the PBXs is ignored. The owner feeds evidence, drains
`next_event()`, and sleeps until `get_timer()` to call `handle_timer(now)` (aioquic's pattern).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

SILENT_DOWN = 3  # silences in a row (and 3 intervals of them) before a PBX is down
SPAN_INTERVALS = 3
FAILED_DIALS_DOWN = 5  # SPEC §5.3
REPROBE_AT_MOST_EVERY_S = 1.0  # a PBX that accepts and at once closes our connection is not hammered


@dataclass(frozen=True, slots=True)
class ProbeDue:
    """Send an OPTIONS to this PBX now."""

    pbx: str


@dataclass(frozen=True, slots=True)
class WentDown:
    pbx: str
    why: str
    all_down: bool  # no PBX is up any more


@dataclass(frozen=True, slots=True)
class WentUp:
    pbx: str


HealthEvent = ProbeDue | WentDown | WentUp


class Cause(StrEnum):
    SILENT = "silent"  # no response at all
    FAILING = "failing"  # answers, but the dials fail
    LINK = "link"  # a connection that cannot be made (a certificate, or refused with several PBXs)


@dataclass
class _Pbx:
    heard_at: float = 0.0  # the last response (or the start)
    up: bool = True
    cause: Cause | None = None
    why: str | None = None  # why it went down (the latest reason while it is down)
    silent: int = 0  # silences since the last response
    failed: int = 0  # dials ended `failed` in a row
    probe_since: float | None = None  # the open probe: sent then, not answered and not counted yet
    probed_at: float | None = None  # the last probe asked for
    next_probe: float | None = None


class PbxHealth:
    """Up/down for each PBX (by its `host:port` as configured); see the module's rules."""

    def __init__(self, pbxs: Iterable[str], interval_s: float) -> None:
        if interval_s < 0:
            raise ValueError("interval_s must be >= 0")
        self.interval_s = interval_s
        self._pbxs = {p: _Pbx() for p in pbxs}
        if not self._pbxs:
            raise ValueError("at least one PBX")
        self._events: deque[HealthEvent] = deque()

    # -- the owner's side --------------------------------------------------------------------------
    def start(self, now: float) -> None:
        """The clock starts: every PBX counts as heard now; the first probes are an interval away."""
        for p in self._pbxs.values():
            p.heard_at = now
            p.next_probe = now + self.interval_s if self.interval_s > 0 else None

    def next_event(self) -> HealthEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times: list[float] = []
        for p in self._pbxs.values():
            if p.next_probe is not None:
                times.append(p.next_probe)
            if p.up and p.silent >= SILENT_DOWN:
                times.append(p.heard_at + self._span)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for name, p in self._pbxs.items():
            if p.next_probe is not None and p.next_probe <= now:
                if p.probe_since is not None:  # the last probe was not answered by this one
                    p.probe_since = None
                    p.silent += 1
                self._probe(name, p, now)
                p.next_probe = now + self.interval_s
            self._judge(name, p, now)

    def is_up(self, pbx: str) -> bool:
        return self._pbxs[pbx].up

    def why(self, pbx: str) -> str | None:
        return self._pbxs[pbx].why

    @property
    def any_up(self) -> bool:
        return any(p.up for p in self._pbxs.values())

    # -- evidence ----------------------------------------------------------------------------------
    def response(self, pbx: str, now: float, *, probe: bool = False) -> None:
        """Any SIP response from the PBX (`probe`: to an OPTIONS)."""
        p = self._pbxs.get(pbx)
        if p is None:
            return
        p.heard_at, p.silent, p.probe_since = now, 0, None
        if not p.up and (probe or p.cause is not Cause.FAILING):
            self._up(pbx, p)

    def probe_timed_out(self, pbx: str, now: float, sent_at: float) -> None:
        """An OPTIONS sent at `sent_at` had no response by its Timer F. One the next probe already counted
        (sent before the open one) is not counted again."""
        p = self._pbxs.get(pbx)
        if p is None or p.probe_since is None or sent_at < p.probe_since:
            return
        p.probe_since = None
        self._silence(pbx, p, now)

    def no_response(self, pbx: str, now: float) -> None:
        """A request had no response at all (INVITE Timer B, a non-INVITE's Timer F)."""
        p = self._pbxs.get(pbx)
        if p is not None:
            self._silence(pbx, p, now)

    def transport_failed(self, pbx: str, now: float, why: str, *, certificate: bool = False) -> None:
        """A connection to the PBX could not be made (`certificate`: the TLS handshake refused its
        certificate)."""
        p = self._pbxs.get(pbx)
        if p is None:
            return
        if certificate or len(self._pbxs) > 1:
            self._down(pbx, p, Cause.LINK, why)
        else:
            self._silence(pbx, p, now)

    def link_lost(self, pbx: str, now: float) -> None:
        """An open connection to the PBX dropped: probe it now (which re-opens the connection)."""
        self.probe(pbx, now)

    def probe(self, pbx: str, now: float) -> None:
        """The owner wants a probe now (to open a connection, or see whether the PBX is still there); at most
        one per `REPROBE_AT_MOST_EVERY_S` beyond the scheduled ones."""
        p = self._pbxs.get(pbx)
        if p is not None and (p.probed_at is None or now - p.probed_at >= REPROBE_AT_MOST_EVERY_S):
            self._probe(pbx, p, now)

    def dial_ended(self, pbx: str, now: float, *, failed: bool) -> None:
        """A call placed with the PBX ended; `failed` as SPEC §6.1 says (Timer B, a transport error, 5xx
        without a far-end Reason, 403, 488, ...)."""
        p = self._pbxs.get(pbx)
        if p is None:
            return
        if not failed:
            p.failed = 0
            if not p.up:
                self._up(pbx, p)
            return
        p.failed += 1
        if p.failed >= FAILED_DIALS_DOWN:
            p.failed = 0
            self._down(pbx, p, Cause.FAILING, f"{FAILED_DIALS_DOWN} failed dials in a row")

    # -- inside ------------------------------------------------------------------------------------
    @property
    def _span(self) -> float:
        return SPAN_INTERVALS * self.interval_s

    def _probe(self, name: str, p: _Pbx, now: float) -> None:
        if p.probe_since is None:
            p.probe_since = now
        p.probed_at = now
        self._events.append(ProbeDue(name))

    def _silence(self, name: str, p: _Pbx, now: float) -> None:
        p.silent += 1
        self._judge(name, p, now)

    def _judge(self, name: str, p: _Pbx, now: float) -> None:
        if p.up and p.silent >= SILENT_DOWN and now - p.heard_at >= self._span:
            what = "OPTIONS or requests" if self.interval_s > 0 else "requests"
            self._down(name, p, Cause.SILENT, f"no answer to {p.silent} {what} in a row for {now - p.heard_at:.1f} s")

    def _down(self, name: str, p: _Pbx, cause: Cause, why: str) -> None:
        if not p.up:
            p.why = why  # the latest reason (a refused connection, then the certificate of the restarted PBX)
            if cause is not Cause.SILENT:
                p.cause = cause
            return
        p.up, p.cause, p.why = False, cause, why
        self._events.append(WentDown(name, why, all_down=not self.any_up))

    def _up(self, name: str, p: _Pbx) -> None:
        p.up, p.cause, p.why, p.silent, p.failed = True, None, None, 0, 0
        self._events.append(WentUp(name))
