"""The user agent's evidence for the health core (sip/ua.py → sip/health.py): which PBX answered, and which
request had no response at all. Sans-IO, a fake clock."""

from __future__ import annotations

import itertools

from sip.call import UacConfig, respond
from sip.health import PbxHealth, WentDown
from sip.message import Request, parse
from sip.ua import Datagram, Output, PbxAnswered, PbxSilent, UserAgent

CFG = UacConfig(local_host="127.0.0.1", local_port=5070, pbx="127.0.0.1:5060")
PBX = ("127.0.0.1", 5060)
OTHER = ("127.0.0.2", 5080)


def _ua() -> UserAgent:
    n = itertools.count()
    return UserAgent(CFG, PBX, lambda: f"t{next(n)}")


def _request(outputs: list[Output]) -> Request:
    sent = [parse(o.data) for o in outputs if isinstance(o, Datagram)]
    assert isinstance(sent[0], Request)
    return sent[0]


def _evidence(outputs: list[Output]) -> list[PbxAnswered | PbxSilent]:
    return [o for o in outputs if isinstance(o, PbxAnswered | PbxSilent)]


def test_every_response_names_the_pbx_its_request_went_to() -> None:
    ua = _ua()
    _, out = ua.place("+420601234567", 30.0, b"", 0.0, pbx=("127.0.0.2:5080", OTHER))
    invite = _request(out)
    for status, reason in ((100, "Trying"), (180, "Ringing"), (503, "Service Unavailable")):
        got = ua.receive(respond(invite, status, reason, to_tag="b").encode(), OTHER, 0.5)
        assert _evidence(got) == [PbxAnswered(OTHER, "INVITE")], status  # a 5xx too: the PBX answered
    options = _request(ua.ping(1.0))
    pong = ua.receive(respond(options, 200, "OK", to_tag="p").encode(), PBX, 1.1)
    assert _evidence(pong) == [PbxAnswered(PBX, "OPTIONS")]
    stray = ua.receive(respond(options, 200, "OK", to_tag="p").encode(), OTHER, 1.2)  # its transaction is done
    assert _evidence(stray) == [PbxAnswered(OTHER, "OPTIONS")]  # where it came from


def test_an_unanswered_options_is_silent_at_its_timer_f_with_when_it_was_sent() -> None:
    ua = _ua()
    ua.ping(10.0, ("127.0.0.2:5080", OTHER))
    silent: list[PbxAnswered | PbxSilent] = []
    while (at := ua.get_timer()) is not None:
        silent += _evidence(ua.handle_timer(at))
    assert silent == [PbxSilent(OTHER, "OPTIONS", 10.0)] and at is None


def test_an_invite_without_any_response_is_silent_at_timer_b_and_one_with_a_provisional_is_not() -> None:
    ua = _ua()
    ua.place("+420601234567", 5.0, b"", 0.0, pbx=("127.0.0.2:5080", OTHER))
    _, ringing = ua.place("+420601234568", 5.0, b"", 0.0)
    ua.receive(respond(_request(ringing), 180, "Ringing", to_tag="r").encode(), PBX, 0.2)
    evidence: list[PbxAnswered | PbxSilent] = []
    while (at := ua.get_timer()) is not None and at < 100:
        evidence += _evidence(ua.handle_timer(at))
    assert evidence == [PbxSilent(OTHER, "INVITE")]  # at 64 x T1; the ringing one was CANCELled at 5 s


def test_the_ua_and_the_core_together_options_ignored_calls_answered_stays_up() -> None:
    """A PBX that never answers OPTIONS and answers every INVITE with 486, a call a second: up throughout;
    then it answers nothing at all: down once three probes in a row went unanswered, over three intervals."""
    ua, health = _ua(), PbxHealth(["127.0.0.1:5060"], interval_s=2.0)
    health.start(0.0)
    now, events = 0.0, []

    def feed(outputs: list[Output]) -> None:
        for o in outputs:
            if isinstance(o, PbxAnswered):
                health.response("127.0.0.1:5060", now, probe=o.method == "OPTIONS")
            elif isinstance(o, PbxSilent):
                if o.sent_at is not None:
                    health.probe_timed_out("127.0.0.1:5060", now, o.sent_at)
                else:
                    health.no_response("127.0.0.1:5060", now)
        while (e := health.next_event()) is not None:
            events.append((now, e))
            if not isinstance(e, WentDown):
                feed(ua.ping(now))  # ProbeDue: an OPTIONS nobody answers

    answering = True
    while now < 60.0:
        if answering and float(now).is_integer():
            _, out = ua.place("+420601234567", 30.0, b"", now)
            feed(ua.receive(respond(_request(out), 486, "Busy Here", to_tag="x").encode(), PBX, now))
        at = min(t for t in (ua.get_timer(), health.get_timer(), now + 0.5) if t is not None)
        now = at
        feed(ua.handle_timer(now))
        health.handle_timer(now)
        feed([])
        if now >= 30.0:
            answering = False
    downs = [(t, e) for t, e in events if isinstance(e, WentDown)]
    assert len(downs) == 1, events
    at, down = downs[0]
    # it last answered at 29; the probes at 30, 32 and 34 went unanswered by the next one: down at 36
    assert at == 36.0 and down.why == "no answer to 3 OPTIONS or requests in a row for 7.0 s", downs
