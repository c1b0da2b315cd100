"""The wire ledger itself: it must catch every INVITE too many or too few, and only an attempt a crash cut
off between its commit and its INVITE may have reached the wire once or not at all."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.support.ledger import Key, compare


@dataclass
class Events:
    by_contact: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, contact: str, *steps: tuple[str, int] | tuple[str, int, str]) -> None:
        events = self.by_contact.setdefault(("c", contact), [])
        for seq, step in enumerate(steps, start=len(events) + 1):
            status, attempt = step[0], step[1]
            signal = {"kind": step[2]} if len(step) > 2 else {"kind": "sip"}
            events.append(
                {
                    "event_id": f"{contact}-{seq}",
                    "sequence": seq,
                    "channel": "voice",
                    "phone": f"+42060100{contact}",
                    "status": status,
                    "attempt": attempt,
                    "signal": signal,
                }
            )


def wire(**invites: int) -> Counter[str]:
    return Counter({f"42060100{contact}": n for contact, n in invites.items()})


def mismatches(events: Events, received: Counter[str]) -> list[str]:
    return compare(events, "voice", received, "number").mismatches


def test_every_attempt_is_one_invite_and_the_ledger_says_who_disagrees() -> None:
    events = Events()
    events.add("01", ("initial", 0), ("calling", 1), ("call_in_progress", 1), ("success", 1))
    events.add("02", ("initial", 0), ("calling", 1), ("retry_scheduled", 1), ("calling", 2), ("busy", 2))
    events.add("03", ("initial", 0), ("blacklisted", 0))
    assert mismatches(events, wire(**{"01": 1, "02": 2})) == []
    too_few = mismatches(events, wire(**{"01": 1, "02": 1}))
    assert len(too_few) == 1 and "4206010002: events say 2 attempt(s), the peer received 1" in too_few[0]
    assert mismatches(events, wire(**{"01": 2, "02": 2}))  # one INVITE too many
    blacklisted = mismatches(events, wire(**{"01": 1, "02": 2, "03": 1}))
    assert any("ends blacklisted without an attempt" in m for m in blacklisted)


def test_an_attempt_cut_off_by_a_crash_reached_the_wire_at_most_once() -> None:
    events = Events()
    # killed between the commit of `calling` and the INVITE, or just after the INVITE: either is true
    events.add("04", ("initial", 0), ("calling", 1), ("retry_scheduled", 1, "gateway_restart"), ("calling", 2))
    events.add("04", ("success", 2))
    assert mismatches(events, wire(**{"04": 1})) == []  # the first attempt's INVITE never left
    assert mismatches(events, wire(**{"04": 2})) == []  # it did
    over = mismatches(events, wire(**{"04": 3}))
    assert len(over) == 1 and "1 of them cut off by a crash" in over[0]
    assert mismatches(events, wire(**{"04": 0}))  # the second attempt was not cut off: its INVITE is owed


def test_a_call_that_was_answered_before_the_crash_is_not_cut_off() -> None:
    events = Events()
    events.add("05", ("initial", 0), ("calling", 1), ("call_in_progress", 1), ("success", 1, "gateway_restart"))
    assert mismatches(events, wire(**{"05": 1})) == []
    assert mismatches(events, wire(**{"05": 0}))  # it was answered, so its INVITE went out
