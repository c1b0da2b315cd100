"""Voice on real trunks (issue 14): 301/302 and RFC 4028 session timers against SIPp as the PBX.

Each test compares what SIPp received with the events (the wire ledger): a followed redirect is one
attempt with two INVITEs under one Call-ID, counted as a *redirected* INVITE, not as an attempt.
The refresh tests use Session-Expires 2 or 3 s in SIPp's 2xx (RFC 4028 allows no less than 90; telgate
honours what the PBX's 2xx says) so that three refreshes take a few seconds; the five-minute case with
a 90 s B2BUA is proved with a fake clock in tests/unit/test_sip_call_redirect_timers.py.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_voice import _dial, _received, voice_settings
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway
from tests.support.sipp import Sipp

pytestmark = pytest.mark.integration


async def _run(scenario: str, broker: Mosquitto, tmp_path: Path, final: str) -> tuple[list[dict[str, Any]], Sipp]:
    with Sipp(scenario, tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send("dial", _dial())
            try:
                await b.wait_for(lambda: b.final("v", "k"), timeout=30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nSIPp errors:\n{pbx.errors()}") from None
            events = b.unique("v", "k")
            assert events[-1]["status"] == final, events[-1]
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx), redirected=ledger.sipp_redirects(pbx))
            assert seen.attempts == 1 and seen.wire == 1
        assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 15) == 0, pbx.errors()
        return events, pbx


async def test_302_is_followed_to_its_contact_as_the_same_attempt(broker: Mosquitto, tmp_path: Path) -> None:
    events, pbx = await _run("redirect_302.xml", broker, tmp_path, "success")
    assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
    redirect = {"sip_code": 302, "contact": f"sip:420777000111@{pbx.address}"}
    assert all(e["signal"]["redirect"] == redirect for e in events[2:])  # the answer and the hangup say so
    assert ledger.redirects_in(pbx.messages()) == {"420601234567": 1}  # two INVITEs, one attempt
    invites = _received(pbx.messages(), "INVITE ")
    call_ids = {re.search(r"Call-ID: (\S+)", m)[1] for m in invites}  # type: ignore[index]
    branches = {re.search(r"branch=([^;\s]+)", m)[1] for m in invites}  # type: ignore[index]
    assert len(invites) == 2 and len(call_ids) == 1 and len(branches) == 2


@pytest.mark.parametrize(
    ("scenario", "why", "redirected"),
    [("redirect_loop.xml", "redirect loop", 0), ("redirect_twice.xml", "second redirect", 1)],
)
async def test_a_redirect_loop_or_a_second_redirect_fails(
    scenario: str, why: str, redirected: int, broker: Mosquitto, tmp_path: Path
) -> None:
    events, pbx = await _run(scenario, broker, tmp_path, "dial_failed")
    last = events[-1]["signal"]
    assert last["kind"] == "failed" and last["sip_code"] == 302 and why in last["reason"], last
    assert sum(ledger.redirects_in(pbx.messages()).values()) == redirected
    assert ("redirect" in last) == bool(redirected)


async def test_422_is_answered_with_the_min_se_asked(broker: Mosquitto, tmp_path: Path) -> None:
    events, pbx = await _run("interval_422_then_200.xml", broker, tmp_path, "success")
    assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
    invites = _received(pbx.messages(), "INVITE ")
    assert len(invites) == 2 and "Session-Expires: 1800" in invites[0] and "Min-SE: 3600" in invites[1]
    assert not ledger.redirects_in(pbx.messages())  # the retry goes to the same URI: no redirect


@pytest.mark.parametrize(("scenario", "method"), [("refresh_uac.xml", "INVITE"), ("refresh_uac_update.xml", "UPDATE")])
async def test_we_refresh_the_session_when_the_pbx_makes_us_the_refresher(
    scenario: str, method: str, broker: Mosquitto, tmp_path: Path
) -> None:
    events, pbx = await _run(scenario, broker, tmp_path, "success")
    assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
    assert events[-1]["signal"]["kind"] == "client_hangup"  # the callee hung up: the refreshes kept it up
    refreshes = [m for m in _received(pbx.messages(), f"{method} ") if re.search(r"^To:.*;tag=", m, re.M)]
    assert len(refreshes) == 3, refreshes  # SIPp checked each one's Session-Expires and Supported: timer
    assert all("Session-Expires: 2;refresher=uac" in m for m in refreshes)


async def test_we_answer_the_pbx_refreshes_when_it_is_the_refresher(broker: Mosquitto, tmp_path: Path) -> None:
    events, pbx = await _run("refresh_uas.xml", broker, tmp_path, "success")
    assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
    assert events[-1]["signal"]["kind"] == "client_hangup"
    sent_by_us = [m for m in pbx.messages() if "message received" in m.split("\n", 1)[0]]
    answers = [m for m in sent_by_us if m.split("\n")[2:3] == ["SIP/2.0 200 OK"] and "CSeq: 1 INVITE" not in m]
    ok_to_invites = [m for m in answers if re.search(r"^CSeq: \d+ INVITE", m, re.M)]
    assert len(ok_to_invites) == 3 and all("Session-Expires: 3;refresher=uac" in m for m in ok_to_invites)
