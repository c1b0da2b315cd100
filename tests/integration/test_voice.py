"""Voice end to end: telgate's SIP UAC → SIPp as the PBX (scenarios in tests/sipp/) → events on Mosquitto."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway, settings_for
from tests.support.sipp import Sipp

pytestmark = pytest.mark.integration

# scenario → (final status, evidence on the last event)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "busy_486.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 486, "q850_cause": 17}),
    "decline_603.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 603}),
    "noanswer_480.xml": ("completed_without_answer", {"kind": "unreachable", "sip_code": 480}),
    "notfound_404.xml": ("invalid_record", {"kind": "invalid_number", "sip_code": 404}),
    "address_484.xml": ("invalid_record", {"kind": "invalid_number", "sip_code": 484}),
    "unavailable_503.xml": ("dial_failed", {"kind": "failed", "sip_code": 503, "reason": "Service Unavailable"}),
    "congestion_503_q850_34.xml": (
        "completed_without_answer",
        {"kind": "unreachable", "sip_code": 503, "q850_cause": 34},
    ),
    "progress_183_then_486.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 486}),
    "ring_forever.xml": ("completed_without_answer", {"kind": "unreachable", "sip_code": 487}),
    "auth_401_then_486.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 486}),
}


def voice_settings(broker: Mosquitto, tmp_path: Path, pbx: str) -> Any:
    return settings_for(
        broker.url,
        tmp_path,
        sip={"pbx": pbx, "local": "127.0.0.1:0", "ring_timeout_s": 1.0, "username": "telgate", "password": "secret"},
    )


@pytest.mark.parametrize("scenario", list(ROWS))
async def test_every_row_against_sipp(scenario: str, broker: Mosquitto, tmp_path: Path) -> None:
    final, evidence = ROWS[scenario]
    with Sipp(scenario, tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send(
                "dial",
                {
                    "command_id": "d1",
                    "campaign_id": "v",
                    "contact_id": "k",
                    "phone": "+420601234567",
                    "policy": {"max_attempts": 1},
                },
            )
            try:
                await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nSIPp errors:\n{pbx.errors()}") from None
            events = b.unique("v", "k")
            assert [e["status"] for e in events][-1] == final
            assert [e["status"] for e in events][:2] == ["initial", "calling"]
            last = events[-1]["signal"]
            for k, v in evidence.items():
                assert last[k] == v, (k, last)
            assert last["source"] == "sip" and last["call_id"]


async def test_answered_then_the_callee_hangs_up(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("answer_then_bye.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send("dial", {"command_id": "d1", "campaign_id": "v", "contact_id": "k", "phone": "+420601234567"})
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            events = b.unique("v", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            end = events[-1]["signal"]
            assert end["q850_cause"] == 16 and 0.8 <= end["duration_s"] <= 3.0
            await asyncio.sleep(0.2)
            assert pbx.proc is not None and pbx.proc.wait(5) == 0, pbx.errors()  # SIPp saw its scenario through
