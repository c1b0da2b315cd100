"""PBX health from all the evidence (issue 23, sip/health.py) against a real SIP peer: SIPp as a PBX that
takes calls and never answers OPTIONS stays up while calls flow; `options_interval_s = 0` sends none."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, gateway, settings_for
from tests.support.sipp import Sipp

pytestmark = [pytest.mark.integration]

INTERVAL_S = 0.5
CALLS = 15
CPS = 5  # 15 calls at 5 a second: about 3 s of traffic, twice the 3 intervals that would take the PBX down


def _received(pbx: Sipp, first_line: str) -> list[str]:
    """SIPp's log says 'UDP message received' above each message it got."""
    return [m for m in pbx.messages() if "message received" in m.split("\n", 1)[0] and f"\n{first_line}" in m]


def _sent(pbx: Sipp, first_line: str) -> list[str]:
    return [m for m in pbx.messages() if "message sent" in m.split("\n", 1)[0] and f"\n{first_line}" in m]


async def _dial_all(b: Backend) -> None:
    await b.send("campaign", {"command_id": "c1", "campaign_id": "h", "action": "create"})
    await b.send("campaign", {"command_id": "c2", "campaign_id": "h", "action": "start"})
    for i in range(CALLS):
        await b.send(
            "dial",
            {
                "command_id": f"d{i}",
                "campaign_id": "h",
                "contact_id": f"k{i}",
                "phone": f"+4206012345{i:02d}",
                "policy": {"max_attempts": 1},
            },
        )


def _settings(broker: Mosquitto, tmp_path: Path, pbx: Sipp, interval_s: float) -> Any:
    sip = {"pbx": pbx.address, "local": "127.0.0.1:0", "options_interval_s": interval_s, "max_cps": CPS}
    return settings_for(broker.url, tmp_path, sip=sip)


async def test_a_pbx_that_ignores_options_but_answers_calls_stays_up(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("busy_486_ignore_options.xml", tmp_path / "sipp", calls=100_000) as pbx:
        async with backend(broker.url) as b, gateway(_settings(broker, tmp_path, pbx, INTERVAL_S), channels=()) as app:
            assert app.voice is not None
            loop = asyncio.get_running_loop()

            def up() -> float | None:
                return app.recorder.registry.get_sample_value("telgate_pbx_up", {"pbx": pbx.address})

            await _dial_all(b)
            await b.wait_for(lambda: any(b.statuses("h", f"k{i}")[-1:] == ["calling"] for i in range(CALLS)))
            first = loop.time()
            await b.wait_for(lambda: all(b.final("h", f"k{i}") for i in range(CALLS)), timeout=30)
            spanned = loop.time() - first
            # what a down PBX would have done, at once: the campaign paused (sticky, on the bus), the gauge 0
            assert not [c for c in b.campaigns if c["campaign_id"] == "h" and c["status"] == "paused"], b.campaigns
            assert up() == 1 and app.voice.state == "up" and app.voice.pbxs[0].why is None
            assert app._channel_states()[0] == "up"  # what presence's `pbx` carries
            assert spanned > 3 * INTERVAL_S, spanned  # the calls outlasted three keepalive intervals
            for i in range(CALLS):
                events = b.unique("h", f"k{i}")
                assert [e["status"] for e in events] == ["initial", "calling", "completed_without_answer"]
                assert events[-1]["signal"]["sip_code"] == 486
            # SIPp's record: the keepalives reached it (and went unanswered), one INVITE per attempt
            options = _received(pbx, "OPTIONS ")
            assert len(options) >= 3 and not _sent(pbx, "SIP/2.0 200 OK"), len(options)
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == CALLS and seen.wire == CALLS


async def test_interval_zero_sends_no_options_at_all(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("busy_486_ignore_options.xml", tmp_path / "sipp", calls=100_000) as pbx:
        async with backend(broker.url) as b, gateway(_settings(broker, tmp_path, pbx, 0), channels=()) as app:
            assert app.voice is not None
            assert app.voice.health.get_timer() is None  # nothing will ever be probed: no timer at all
            await _dial_all(b)
            await b.wait_for(lambda: all(b.final("h", f"k{i}") for i in range(CALLS)), timeout=30)
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == CALLS and seen.wire == CALLS
            assert app.voice.state == "up" and app.voice.health.get_timer() is None
            assert not [c for c in b.campaigns if c["campaign_id"] == "h" and c["status"] == "paused"]
        assert _received(pbx, "INVITE ") and not _received(pbx, "OPTIONS ")  # SIPp's log: not one OPTIONS
