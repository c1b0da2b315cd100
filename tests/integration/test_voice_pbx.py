"""One real call path with programs we did not write: telgate registers with Kamailio (digest), dials
through it (proxy digest, record-route), baresip auto-answers; the prompt plays and we hang up, or the
call is blind-transferred to an operator line and the transfer's NOTIFY connects it."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway, settings_for
from tests.support.pbx import Baresip, Kamailio

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]
NUMBER = "420601234567"


def _prompt(folder: Path, seconds: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    frames = int(8000 * seconds)
    pcm = struct.pack(f"<{frames}h", *(int(6000 * math.sin(2 * math.pi * 400 * i / 8000)) for i in range(frames)))
    with wave.open(str(folder / "notice.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)


def _settings(broker: Mosquitto, tmp_path: Path, kamailio: Kamailio) -> Any:
    return settings_for(
        broker.url,
        tmp_path,
        sip={
            "pbx": kamailio.address,
            "local": "127.0.0.1:0",
            "register": True,
            "username": "telgate",
            "password": "secret",
            "ring_timeout_s": 10,
            "prompts_dir": str(tmp_path / "prompts"),
        },
    )


async def test_registered_call_through_kamailio_to_baresip_plays_the_prompt(broker: Mosquitto, tmp_path: Path) -> None:
    _prompt(tmp_path / "prompts", 1.0)
    with Kamailio(tmp_path / "kamailio") as kam, Baresip(tmp_path / "baresip", kam.address, (NUMBER,)) as phone:
        async with backend(broker.url) as b, gateway(_settings(broker, tmp_path, kam), channels=()):
            await b.wait_for(lambda: kam.logged("registered sip:telgate@127.0.0.1"), timeout=10)
            dial = {"command_id": "d1", "campaign_id": "e2e", "contact_id": "k1", "phone": f"+{NUMBER}"}
            await b.send("dial", {**dial, "prompt": "notice.wav", "policy": {"max_attempts": 1}})
            await b.wait_for(lambda: b.final("e2e", "k1"), timeout=20)
            events = b.unique("e2e", "k1")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"], phone.text()[
                -2000:
            ]
            assert events[2]["signal"]["sip_code"] == 200
            end = events[-1]["signal"]
            assert end["kind"] == "hangup" and 0.9 <= end["duration_s"] <= 3.0
            # the ledger: Kamailio logged one initial INVITE (one Call-ID) from telgate to the number
            seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam.log, from_user="telgate"))
            assert seen.attempts == 1 and seen.wire == 1
        assert kam.logged(f"authenticated INVITE from telgate to {NUMBER}")  # the proxy challenge was answered
        text = phone.text()
        assert "Call established" in text or "call established" in text, text[-2000:]


async def test_blind_transfer_through_kamailio_to_an_operator_line(broker: Mosquitto, tmp_path: Path) -> None:
    with Kamailio(tmp_path / "kamailio") as kam, Baresip(tmp_path / "baresip", kam.address, (NUMBER, "operator")) as ph:
        async with backend(broker.url) as b, gateway(_settings(broker, tmp_path, kam), channels=()):
            await b.wait_for(lambda: kam.logged("registered sip:telgate@127.0.0.1"), timeout=10)
            dial = {"command_id": "d1", "campaign_id": "e2e", "contact_id": "k1", "phone": f"+{NUMBER}"}
            connect_to = f"sip:operator@{kam.address}"
            # predictive calls are paced by the gateway: no operators, no calls (docs/lawful-calling.md)
            await b.send("campaign", {"command_id": "c1", "campaign_id": "e2e", "action": "start", "operators": 1})
            await b.send("dial", {**dial, "mode": "predictive", "connect_to": connect_to})
            await b.wait_for(lambda: b.final("e2e", "k1"), timeout=20)
            events = b.unique("e2e", "k1")
            statuses = [e["status"] for e in events]
            assert statuses == ["initial", "calling", "awaiting_operator", "call_in_progress", "success"], ph.text()[
                -3000:
            ]
            assert events[3]["signal"]["kind"] == "connected" and events[-1]["signal"]["transfer"] == "ok"
            # the ledger: one INVITE of ours to the number; baresip's INVITE to the operator (From: the
            # number, after our REFER) is not telgate's and is not counted
            seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam.log, from_user="telgate"))
            assert seen.attempts == 1 and seen.wire == 1
        assert kam.logged(f"authenticated INVITE from {NUMBER} to operator")  # baresip followed our REFER
