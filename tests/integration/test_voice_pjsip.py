"""A real SIP stack as the callee: PJSIP (pjsua2) with session timers required answers our call; the
call must stay up past our session refresh, and PJSIP's own message log must show the refresh."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.integration.test_voice import _dial, voice_settings
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway
from tests.support.pjsip_callee import received
from tests.support.sipp import free_udp_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _refreshes(messages: list[str]) -> list[str]:
    """In-dialog UPDATE/INVITE requests (a To tag) carrying Session-Expires: our refreshes."""
    return [
        m
        for m in messages
        if re.match(r"(UPDATE|INVITE) sip:", m)
        and re.search(r"^To:.*;tag=", m, re.M)
        and re.search(r"^(Session-Expires|x):", m, re.M)
    ]


@pytest.mark.parametrize("session_expires", [90])
async def test_pjsip_with_session_timers_required_sees_our_refresh(
    session_expires: int, broker: Mosquitto, tmp_path: Path
) -> None:
    port = free_udp_port()
    log = tmp_path / "pjsip.log"
    callee = subprocess.Popen(
        [sys.executable, "-m", "tests.support.pjsip_callee", str(port), str(log), str(session_expires)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []  # what the PJSIP process reports, line by line (its log file is written late)
    assert callee.stdout is not None
    loop = asyncio.get_running_loop()
    spoke = asyncio.Event()  # set at each line it reports, and at the end of its output

    def read() -> None:
        for line in callee.stdout:  # type: ignore[union-attr]
            said.append(line.strip())
            with contextlib.suppress(RuntimeError):  # the test is over: nobody listens
                loop.call_soon_threadsafe(spoke.set)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(spoke.set)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    async def reported(what: str, patience_s: float) -> None:
        """Wait for PJSIP to report `what` (each line it reports wakes this up)."""
        try:
            async with asyncio.timeout(patience_s):
                while True:
                    spoke.clear()
                    if any(line.startswith(what) for line in said):
                        return
                    assert callee.poll() is None, f"the PJSIP callee exited: {said}"
                    await spoke.wait()
        except TimeoutError:
            raise AssertionError(f"PJSIP did not report {what!r} within {patience_s} s: {said}") from None

    try:
        await reported("ready", 10)
        settings = voice_settings(broker, tmp_path, f"127.0.0.1:{port}", session_expires_s=session_expires)
        async with backend(broker.url) as b, gateway(settings, channels=()):
            await b.send("dial", _dial())
            await b.wait_for(lambda: b.statuses("v", "k")[-1:] == ["call_in_progress"], timeout=15)
            # our refresh is due at half the interval PJSIP's 2xx set (the session timer under test: its
            # length is the wait); PJSIP reports the one it answered
            await reported("tsx UPDATE 200", session_expires)
            assert b.statuses("v", "k")[-1] == "call_in_progress"  # still up after the refresh
            callee.stdin.close()  # type: ignore[union-attr]  # PJSIP hangs up
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            events = b.unique("v", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            assert events[-1]["signal"]["kind"] == "client_hangup"
            assert await asyncio.to_thread(callee.wait, 30) == 0
            messages = received(log.read_text(errors="replace"))  # complete once PJSIP has exited
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(messages))
            assert seen.attempts == 1 and seen.wire == 1
        reader.join(5)
        refresh = _refreshes(messages)[0]
        assert refresh.startswith("UPDATE ")  # PJSIP's Allow lists UPDATE: no re-INVITE, no SDP
        assert re.search(r"^Session-Expires: 90;refresher=uac", refresh, re.M), refresh
        confirmed, answered = said.index("state CONFIRMED 200"), said.index("tsx UPDATE 200")
        disconnected = [i for i, line in enumerate(said) if "DISCONN" in line]
        assert disconnected and disconnected[0] > answered > confirmed  # up from the answer until it hung up
    finally:
        if callee.poll() is None:
            callee.kill()
        callee.wait()
