"""The demo's view of the bus (gateway/demo._Progress): a redelivered event counts once, and a run that
went quiet names each contact it still waits for with the last status it saw."""

from __future__ import annotations

from typing import Any

from gateway.demo import Summary, _Progress, stalled_line


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
