"""The demo's view of the bus (gateway/demo._Progress): a redelivered event counts once, and a run that
went quiet names each contact it still waits for with the last status it saw."""

from __future__ import annotations

from typing import Any

from gateway.tools.demo import Summary, _Progress, stalled_line, whatsapp_replies, whatsapp_scenarios


def event(n: int, contact: str, status: str, final: bool = False, campaign: str = "demo-calls") -> dict[str, Any]:
    return {
        "event_id": f"e{n}",
        "campaign_id": campaign,
        "contact_id": contact,
        "channel": "voice" if campaign == "demo-calls" else "whatsapp",
        "phone": "+420601000000",
        "status": status,
        "previous_status": None,
        "attempt": 1,
        "final": final,
        "sequence": n,
    }


def test_unsettled_contacts_are_named_with_their_last_status() -> None:
    state = _Progress()
    assert state.add(event(1, "client-0000", "calling"))
    assert not state.add(event(1, "client-0000", "calling")), "a redelivery is no change"
    assert state.add(event(2, "client-0000", "success", final=True))
    assert state.add(event(3, "client-0001", "calling"))
    assert state.add(event(4, "client-0000", "delivered", campaign="demo-notices"))
    assert state.calls.attempts == 2
    unsettled = state.unsettled({"demo-calls": 3, "demo-notices": 2})
    assert unsettled == [
        "demo-calls/client-0001: calling",
        "demo-calls/client-0002: no event",
        "demo-notices/client-0001: no event",
    ]
    line = stalled_line(Summary(stalled=unsettled))
    assert line.startswith("STALLED:") and "3 still waited for" in line and "client-0002: no event" in line


def test_replies_are_counted_by_outcome() -> None:
    state = _Progress()
    sent = event(1, "client-0000", "read", final=True, campaign="demo-notices")
    assert state.add({**sent, "previous_status": "in_progress"})
    replied = {**event(2, "client-0000", "replied", final=True, campaign="demo-notices"), "previous_status": "read"}
    replied["signal"] = {"reply": {"type": "button", "payload": "CONFIRM", "text": "Confirm", "outcome": "confirm"}}
    assert state.add(replied)
    assert not state.add(replied), "a redelivery counts once"
    assert state.whatsapp.replied == state.whatsapp.read == state.whatsapp.sent == 1
    assert state.replies == {"confirm": 1}
    assert state.replies_line() == "whatsapp replies: 1 of 1 read (confirm 1)"


def test_only_readers_answer_and_one_writes_stop() -> None:
    numbers = [f"420702{n:06d}" for n in range(200)]
    scenarios = whatsapp_scenarios(numbers, 1.0, 7)
    plan = whatsapp_replies(scenarios, 1.0, 7)
    assert plan and all(any(s == "read" for _, s, _ in scenarios[n].statuses) for n in plan)
    assert [r.text for r in plan.values()].count("STOP") == 1
    assert {r.payload for r in plan.values()} == {"CONFIRM", "DECLINE", None}
    assert all(0.3 <= r.delay_s <= 2.5 for r in plan.values())
