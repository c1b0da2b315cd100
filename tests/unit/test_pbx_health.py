"""sip/health.py: PBX health from all the evidence, with a fake clock (no sockets, no sleeping)."""

from __future__ import annotations

import pytest

from sip.health import (
    FAILED_DIALS_DOWN,
    SILENT_DOWN,
    HealthEvent,
    PbxHealth,
    ProbeDue,
    WentDown,
    WentUp,
)

A, B = "10.0.0.1:5060", "10.0.0.2:5060"


class Clock:
    """Drives a PbxHealth the way the voice channel does: sleep until get_timer(), handle_timer(now)."""

    def __init__(self, health: PbxHealth, now: float = 1000.0) -> None:
        self.health = health
        self.now = now
        self.events: list[tuple[float, HealthEvent]] = []
        health.start(now)

    def drain(self) -> list[HealthEvent]:
        out = []
        while (e := self.health.next_event()) is not None:
            out.append(e)
            self.events.append((self.now, e))
        return out

    def run_until(self, until: float, every: float | None = None, feed: object = None) -> None:
        """Advance to `until`, firing each timer at its time; `feed(now)` every `every` seconds too."""
        next_feed = self.now + every if every is not None else None
        while True:
            at = self.health.get_timer()
            step = min(t for t in (at, next_feed, until) if t is not None)
            if step > until:
                break
            self.now = step
            if next_feed is not None and step >= next_feed and callable(feed):
                feed(step)
                next_feed = step + (every or 0.0)
            if at is not None and at <= step:
                self.health.handle_timer(step)
            self.drain()
            if step >= until:
                break

    def of(self, kind: type) -> list[tuple[float, HealthEvent]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


def test_options_ignored_but_invite_responses_flowing_stays_up() -> None:
    health = PbxHealth([A], interval_s=15.0)
    clock = Clock(health)
    # a call a second: each INVITE gets its 100/180/486 (any response), no OPTIONS is ever answered
    clock.run_until(clock.now + 600, every=1.0, feed=lambda now: health.response(A, now))
    probes = clock.of(ProbeDue)
    assert len(probes) == 40 and probes[0][0] == 1015.0  # the keepalive still goes out, every interval
    assert not clock.of(WentDown) and health.is_up(A) and health.any_up


def test_nothing_at_all_for_three_intervals_is_down_then_a_response_is_up() -> None:
    health = PbxHealth([A], interval_s=15.0)
    clock = Clock(health)
    clock.run_until(1059.9)
    assert health.is_up(A)  # probes at 15, 30, 45: two counted unanswered so far
    clock.run_until(1060.0)
    [(at, down)] = clock.of(WentDown)
    assert at == 1060.0 and isinstance(down, WentDown) and down.all_down and down.pbx == A
    assert "no answer to 3 OPTIONS or requests in a row for 60.0 s" == down.why == health.why(A)
    clock.run_until(1200.0)
    assert len(clock.of(WentDown)) == 1 and len(clock.of(ProbeDue)) == 13  # still probed while down
    health.response(A, 1200.5)  # any response: here an INVITE's 180 (not even an OPTIONS)
    assert clock.drain() == [WentUp(A)] and health.is_up(A) and health.why(A) is None


def test_a_probes_own_timer_f_counts_it_once() -> None:
    health = PbxHealth([A], interval_s=60.0)  # longer than Timer F (32 s): the timeout is the first word
    clock = Clock(health)
    clock.run_until(1060.0)
    assert clock.drain() == [] and [e for _, e in clock.events] == [ProbeDue(A)]
    health.probe_timed_out(A, 1092.0, sent_at=1060.0)
    health.probe_timed_out(A, 1092.0, sent_at=1060.0)  # again: not counted twice
    clock.run_until(1180.0)  # probes at 120 (the 60 one already counted: not again) and 180
    health.probe_timed_out(A, 1152.0, sent_at=1120.0)  # late, for the probe the 180 tick counted
    assert health.is_up(A)
    health.probe_timed_out(A, 1212.0, sent_at=1180.0)
    clock.drain()
    [(_, down)] = clock.of(WentDown)
    assert isinstance(down, WentDown) and down.why.startswith("no answer to 3 OPTIONS or requests in a row")


def test_silences_must_span_three_intervals() -> None:
    health = PbxHealth([A], interval_s=15.0)
    clock = Clock(health)
    for t in (1001.0, 1002.0, 1003.0):  # three INVITEs timed out (Timer B) just after the start
        health.no_response(A, t)
    assert health.is_up(A) and health.get_timer() == 1015.0
    clock.run_until(1044.9)
    assert health.is_up(A)
    clock.run_until(1045.0)  # three intervals since it last answered (the start): now it is down
    [(at, _)] = clock.of(WentDown)
    assert at == 1045.0


def test_interval_zero_no_probes_down_only_from_requests_with_no_response() -> None:
    health = PbxHealth([A], interval_s=0.0)
    clock = Clock(health)
    assert health.get_timer() is None
    clock.run_until(clock.now + 3600)
    assert clock.events == [] and health.is_up(A)  # an hour of nothing: nothing known, nothing sent
    health.no_response(A, 5000.0)
    health.response(A, 5001.0)  # an answer in between resets the count
    for t in range(SILENT_DOWN - 1):
        health.no_response(A, 5040.0 + t)
    assert health.is_up(A)
    health.no_response(A, 5050.0)
    assert clock.drain() == [WentDown(A, "no answer to 3 requests in a row for 49.0 s", all_down=True)]
    assert health.get_timer() is None  # down and not probed: a response (once calls flow again) brings it back
    health.response(A, 6000.0)
    assert clock.drain() == [WentUp(A)]


def test_interval_zero_a_dropped_connection_still_asks_for_one_probe() -> None:
    health = PbxHealth([A], interval_s=0.0)
    Clock(health)
    health.link_lost(A, 10.0)
    health.link_lost(A, 10.5)  # again at once: not again
    health.link_lost(A, 11.0)
    assert [health.next_event(), health.next_event(), health.next_event()] == [ProbeDue(A), ProbeDue(A), None]


def test_five_failed_dials_in_a_row_even_with_responses_and_late_answers_do_not_bring_it_back() -> None:
    health = PbxHealth([A, B], interval_s=15.0)
    clock = Clock(health)
    for i in range(FAILED_DIALS_DOWN - 1):
        health.response(A, 1001.0 + i)  # 503 Service Unavailable: it answered ...
        health.dial_ended(A, 1001.0 + i, failed=True)  # ... and the dial failed
    health.dial_ended(A, 1005.0, failed=False)  # a 486: not failed, the count starts again
    for i in range(FAILED_DIALS_DOWN):
        health.response(A, 1006.0 + i)
        health.dial_ended(A, 1006.0 + i, failed=True)
    assert clock.drain() == [WentDown(A, "5 failed dials in a row", all_down=False)]
    health.response(A, 1011.0)  # the 503 of a call placed before: it stays down
    assert not health.is_up(A) and clock.drain() == []
    clock.run_until(1015.0)  # the keepalive to it ...
    assert clock.drain() == [] and [e for _, e in clock.events][-2:] == [ProbeDue(A), ProbeDue(B)]
    health.response(A, 1015.1, probe=True)  # ... is answered: it is tried again
    assert clock.drain() == [WentUp(A)] and health.is_up(A)


def test_several_pbxs_each_its_own_and_all_down_only_with_the_last() -> None:
    health = PbxHealth([A, B], interval_s=1.0)
    clock = Clock(health, now=0.0)
    clock.run_until(10.0, every=0.5, feed=lambda now: health.response(B, now))  # B answers calls, A nothing
    [(at, down_a)] = clock.of(WentDown)
    assert at == 4.0 and down_a == WentDown(A, "no answer to 3 OPTIONS or requests in a row for 4.0 s", False)
    assert health.is_up(B) and health.any_up
    clock.run_until(20.0)  # B falls silent too: it last answered at 10.0, just before that tick's probe
    downs = clock.of(WentDown)
    assert [e for _, e in downs][1:] == [
        WentDown(B, "no answer to 3 OPTIONS or requests in a row for 3.0 s", all_down=True)
    ] and downs[1][0] == 13.0
    health.response(B, 20.5, probe=True)
    assert clock.drain() == [WentUp(B)] and health.any_up and not health.is_up(A)
    health.response("10.9.9.9:5060", 21.0)  # not one of ours: ignored
    assert clock.drain() == []


def test_a_connection_that_cannot_be_made() -> None:
    one = PbxHealth([A], interval_s=15.0)
    Clock(one)
    one.transport_failed(A, 1001.0, "tcp connection failed: Connection refused")
    assert one.is_up(A) and one.next_event() is None  # one PBX: one silence (and each INVITE's `failed`)
    one.transport_failed(A, 1002.0, "tls: certificate verify failed: certificate has expired", certificate=True)
    assert one.next_event() == WentDown(A, "tls: certificate verify failed: certificate has expired", True)
    two = PbxHealth([A, B], interval_s=15.0)
    Clock(two)
    two.transport_failed(B, 1001.0, "tcp connection failed: Connection refused")  # several: at once
    assert two.next_event() == WentDown(B, "tcp connection failed: Connection refused", all_down=False)
    two.transport_failed(B, 1002.0, "tls: x", certificate=True)
    assert two.why(B) == "tls: x" and two.next_event() is None  # the latest reason, no second event


def test_refuses_a_negative_interval_and_no_pbx() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        PbxHealth([A], interval_s=-1)
    with pytest.raises(ValueError, match="PBX"):
        PbxHealth([], interval_s=1)
