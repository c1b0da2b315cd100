"""Do-not-call means not called (SPEC §9, issue 10): the races between what asks for a dial and what forbids
it, each checked on the wire. SIPp is the PBX (tests/sipp/mix.xml: the dialled number's last digit picks
the outcome — 0-5 answered and hung up by the callee after SIPp's -d, 6-7 busy, 8-9 480) and the Cloud
API stand-in the WhatsApp side; every test compares what they received with the events, contact by contact.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.service.app import App
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, gateway, settings_for, store_toml
from tests.support.sipp import Sipp
from tests.support.wa import send, wa_rig

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]
ROOT = Path(__file__).resolve().parents[2]
NOT_DIALLED = "420601000111"  # the number on the do-not-call list, written in every notation below
NOTATIONS = ("+420601000111", "+420 601 000 111", "00420601000111", "601 000 111", "(+420) 601-000-111")


def mix_pbx(tmp_path: Path, hold_ms: int = 300) -> Sipp:
    return Sipp("mix.xml", tmp_path / "sipp", calls=100_000, extra=("-d", str(hold_ms)))


def voice(broker: Mosquitto, tmp_path: Path, pbx: Sipp, **sections: dict[str, Any]) -> Any:
    sip = {"pbx": pbx.address, "local": "127.0.0.1:0", "ring_timeout_s": 5, **sections.pop("sip", {})}
    return settings_for(broker.url, tmp_path, sip=sip, **sections)


def dial(cid: str, contact: str, phone: str, campaign: str = "dnc", **kw: Any) -> dict[str, Any]:
    return {"command_id": cid, "campaign_id": campaign, "contact_id": contact, "phone": phone, **kw}


async def campaign(b: Backend, cid: str, name: str, action: str, **kw: Any) -> None:
    await b.send("campaign", {"command_id": cid, "campaign_id": name, "action": action, **kw})
    await b.wait_for(lambda: b.result(cid) is not None)
    assert b.result(cid)["accepted"], b.result(cid)  # type: ignore[index]


def dialogs_agree(app: App) -> None:
    """telgate_calls_active, the dispatcher's room and the SIP UA's own dialogs are one count."""
    assert app.voice is not None
    ua = app.voice.ua
    sample = app.recorder.registry.get_sample_value
    ringing = sample("telgate_calls_active", {"state": "ringing"})
    answered = sample("telgate_calls_active", {"state": "answered"})
    assert (ringing, answered) == (ua.dialogs("ringing"), ua.dialogs("answered"))
    assert app.voice.active() == ua.dialogs() == len(app.voice._calls)
    assert sum(app.voice._active.values()) == ua.dialogs()


async def test_blacklisted_in_any_notation_while_queued_is_never_dialled(broker: Mosquitto, tmp_path: Path) -> None:
    with mix_pbx(tmp_path) as pbx:
        async with backend(broker.url) as b, gateway(voice(broker, tmp_path, pbx), channels=()) as app:
            await campaign(b, "c1", "dnc", "create")  # a draft: contacts wait in the queue
            for i, phone in enumerate(NOTATIONS):
                await b.send("dial", dial(f"d{i}", f"dnc{i}", phone))
            await b.send("dial", dial("ok", "allowed", "+420601000110"))
            await b.wait_for(lambda: len(b.results) == len(NOTATIONS) + 2)
            # blacklisted while they wait, in yet another notation
            await b.send(
                "blacklist", {"command_id": "bl", "campaign_id": "dnc", "action": "add", "phone": "00 420 601 000 111"}
            )
            await b.wait_for(lambda: b.result("bl") is not None)
            assert b.result("bl")["accepted"]  # type: ignore[index]
            await campaign(b, "c2", "dnc", "start")
            await b.wait_for(lambda: all(b.final("dnc", f"dnc{i}") for i in range(len(NOTATIONS))))
            await b.wait_for(lambda: b.final("dnc", "allowed"), timeout=15)
            for i in range(len(NOTATIONS)):
                assert b.statuses("dnc", f"dnc{i}") == ["initial", "blacklisted"]
            assert b.statuses("dnc", "allowed") == ["initial", "calling", "call_in_progress", "success"]
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert ledger.sipp_invites(pbx)()[NOT_DIALLED] == 0
            assert seen.compared == len(NOTATIONS) + 1 and seen.wire == seen.attempts == 1
            dialogs_agree(app)
            assert app.voice is not None and app.voice.active() == 0  # nothing counted for calls never placed


async def test_blacklisted_while_a_retry_is_scheduled_is_not_dialled_again(broker: Mosquitto, tmp_path: Path) -> None:
    busy = "420601000117"  # 7: busy at SIPp
    with mix_pbx(tmp_path) as pbx:
        settings = voice(broker, tmp_path, pbx, retry={"max_attempts": 3, "delays_s": [1.5]})
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            await b.send("dial", dial("d1", "busy", f"+{busy}", policy={"retry_on": ["rejected"]}))
            await b.wait_for(lambda: b.statuses("dnc", "busy")[-1:] == ["retry_scheduled"], timeout=10)
            await b.send(
                "blacklist", {"command_id": "bl", "campaign_id": "dnc", "action": "add", "phone": "601 000 117"}
            )
            await b.wait_for(lambda: b.final("dnc", "busy"), timeout=10)
            events = b.unique("dnc", "busy")
            assert [e["status"] for e in events] == ["initial", "calling", "retry_scheduled", "blacklisted"]
            assert events[-1]["attempt"] == 1  # the due retry found the number on the list
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.wire == 1 and ledger.sipp_invites(pbx)()[busy] == 1
            dialogs_agree(app)


async def test_cancel_and_remove_racing_the_dispatcher(broker: Mosquitto, tmp_path: Path) -> None:
    """Commands that forbid a dial arrive while the dispatcher is taking the same contacts: whichever
    wins, a contact that ends canceled/removed before its dial got no INVITE, and one that was dialled
    got exactly its INVITE (and a CANCEL when it was still ringing)."""
    n = 60
    with mix_pbx(tmp_path, hold_ms=200) as pbx:
        settings = voice(broker, tmp_path, pbx, sip={"max_cps": 40, "ring_timeout_s": 5}, retry={"max_attempts": 1})
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            for i in range(n):
                await b.send("dial", dial(f"d{i}", f"k{i}", f"+42060100{i:04d}"))
                if i % 3 == 1:
                    await b.send("cancel", {"command_id": f"c{i}", "campaign_id": "dnc", "contact_id": f"k{i}"})
                elif i % 3 == 2:
                    await b.send("remove", {"command_id": f"r{i}", "campaign_id": "dnc", "contact_id": f"k{i}"})
                dialogs_agree(app)
            await b.send("cancel", {"command_id": "all", "campaign_id": "dnc"})  # whatever is still unfinished
            await b.wait_for(lambda: all(b.final("dnc", f"k{i}") for i in range(n)), timeout=30)
            outcomes: dict[str, int] = {}
            for i in range(n):
                statuses = b.statuses("dnc", f"k{i}")
                outcomes[statuses[-1]] = outcomes.get(statuses[-1], 0) + 1
                if "calling" not in statuses:
                    assert statuses[-1] in ("canceled_by_admin", "removed"), statuses
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.compared == n and seen.wire == seen.attempts
            assert outcomes.get("canceled_by_admin", 0) + outcomes.get("removed", 0) >= n // 3, outcomes
            # a CANCEL that crossed the callee's answer ends with our BYE; one SIPp's mix scenario does not
            # answer ends on its transaction timer (32 s): the count must reach 0 and agree all along
            await b.wait_for(lambda: app.voice is not None and app.voice.active() == 0, timeout=60)
            dialogs_agree(app)


async def test_paused_campaign_dials_nothing_new_and_no_due_retry(broker: Mosquitto, tmp_path: Path) -> None:
    with mix_pbx(tmp_path) as pbx:
        settings = voice(broker, tmp_path, pbx, retry={"max_attempts": 2, "delays_s": [0.5]})
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            await b.send("dial", dial("d1", "busy", "+420601000016", policy={"retry_on": ["rejected"]}))
            await b.wait_for(lambda: b.statuses("dnc", "busy")[-1:] == ["retry_scheduled"], timeout=10)
            await campaign(b, "p", "dnc", "pause")
            await b.send("dial", dial("d2", "new", "+420601000020"))
            await b.wait_for(lambda: b.result("d2") is not None)
            # three retry delays pass while paused: the due retry and the new contact wait
            await asyncio.sleep(1.5)
            assert b.statuses("dnc", "busy")[-1] == "retry_scheduled"
            assert b.statuses("dnc", "new") == ["initial"]
            paused = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert paused.wire == 1
            await campaign(b, "r", "dnc", "resume")
            await b.wait_for(lambda: b.final("dnc", "busy") and b.final("dnc", "new"), timeout=15)
            assert b.statuses("dnc", "busy")[-1] == "completed_without_answer"
            resumed = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert resumed.wire == 3  # busy twice, new once
            dialogs_agree(app)


async def test_finish_cancels_the_queue_and_lets_calls_in_flight_end(broker: Mosquitto, tmp_path: Path) -> None:
    with mix_pbx(tmp_path, hold_ms=1500) as pbx:
        settings = voice(broker, tmp_path, pbx, sip={"max_concurrent_calls": 2}, retry={"max_attempts": 3})
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            for i in range(8):  # answered and held 1.5 s: two at a time, the rest wait
                await b.send("dial", dial(f"d{i}", f"k{i}", f"+42060100003{i}", policy={"retry_on": ["rejected"]}))
            await b.wait_for(lambda: sum("call_in_progress" in b.statuses("dnc", f"k{i}") for i in range(8)) == 2)
            dialogs_agree(app)
            await campaign(b, "f", "dnc", "finish")
            await b.wait_for(lambda: all(b.final("dnc", f"k{i}") for i in range(8)), timeout=15)
            finals = [b.statuses("dnc", f"k{i}")[-1] for i in range(8)]
            assert finals.count("success") == 2 and finals.count("canceled_by_admin") == 6, finals
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.wire == 2
            await b.wait_for(lambda: app.voice is not None and app.voice.active() == 0, timeout=10)
            dialogs_agree(app)


async def test_budget_running_out_between_two_dials(broker: Mosquitto, tmp_path: Path) -> None:
    with mix_pbx(tmp_path) as pbx:
        settings = voice(broker, tmp_path, pbx, retry={"max_attempts": 2, "delays_s": [0.3]})
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            await campaign(b, "c", "dnc", "create", budget={"max_contacts": 3})
            await campaign(b, "s", "dnc", "start")
            await b.send("dial", dial("d0", "k0", "+420601000046", policy={"retry_on": ["rejected"]}))  # busy
            await b.wait_for(lambda: "calling" in b.statuses("dnc", "k0"))
            for i in range(1, 7):  # one at a time and in a burst: the fourth contact onwards is over budget
                await b.send("dial", dial(f"d{i}", f"k{i}", f"+42060100004{i}"))
            await b.wait_for(lambda: all(b.final("dnc", f"k{i}") for i in range(7)), timeout=15)
            finals = [b.statuses("dnc", f"k{i}")[-1] for i in range(7)]
            assert finals.count("plan_limit_exceeded") == 4, finals
            assert b.statuses("dnc", "k0")[-1] == "completed_without_answer"  # its retry is no new contact
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.wire == 4  # k0 twice, two more contacts once
            dialogs_agree(app)


async def test_blacklisted_whatsapp_contacts_get_no_template(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path) as (_app, standin):
        await b.send("campaign", {"command_id": "c", "campaign_id": "wa", "action": "create"})
        for i, phone in enumerate(NOTATIONS):
            await b.send("send", {**send(f"s{i}", f"dnc{i}", "0"), "phone": phone})
        await b.send("send", send("ok", "allowed", "420601000110"))
        await b.send("blacklist", {"command_id": "bl", "campaign_id": "wa", "action": "add", "phone": NOTATIONS[0]})
        await b.wait_for(lambda: b.result("bl") is not None)
        await b.send("campaign", {"command_id": "s", "campaign_id": "wa", "action": "start"})
        await b.wait_for(lambda: all(b.final("wa", f"dnc{i}") for i in range(len(NOTATIONS))))
        await b.wait_for(lambda: b.statuses("wa", "allowed")[-1:] == ["read"], timeout=15)
        for i in range(len(NOTATIONS)):
            assert b.statuses("wa", f"dnc{i}") == ["initial", "blacklisted"]
        seen = await ledger.check(b, "whatsapp", ledger.standin_sends(standin.received), by="contact")
        assert seen.wire == 1 and [r.to for r in standin.received] == ["420601000110"]


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(cfg)], stderr=out, stdout=out, env=env
        )


def _log_lines(log: Path, message: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("msg") == message:
                out.append(entry)
    return out


async def test_restart_with_contacts_queued_and_blacklisted_meanwhile(broker: Mosquitto, tmp_path: Path) -> None:
    """Queued contacts survive a SIGKILL; one blacklisted while the gateway was down is not dialled after
    it comes back; a SIGTERM with nothing in flight has nothing to wait for."""
    cfg, log = tmp_path / "telgate.toml", tmp_path / "gateway.log"
    with mix_pbx(tmp_path) as pbx:
        cfg.write_text(
            f'[gateway]\nid = "gw-dnc"\ndata_dir = "{tmp_path / "gw"}"\ndrain_timeout_s = 600\n'
            f'[bus]\nurl = "{broker.url}"\nclient_id = "telgate-dnc"\n[http]\nlisten = "127.0.0.1:0"\n'
            f'[sip]\npbx = "{pbx.address}"\nlocal = "127.0.0.1:0"\n{store_toml()}'
        )
        proc = _start(cfg, log)
        try:
            async with backend(broker.url) as b:
                await b.wait_for(lambda: b.presence.get("gw-dnc") == "online", timeout=15)
                await campaign(b, "c", "dnc", "create")
                for i in range(5):
                    await b.send("dial", dial(f"d{i}", f"k{i}", f"+42060100005{i}"))
                await b.send("dial", dial("dx", "dnc", NOTATIONS[3]))
                await b.wait_for(lambda: len(b.results) == 7)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                # the list changes while the gateway is down; the command waits for it on the broker
                await b.send(
                    "blacklist", {"command_id": "bl", "campaign_id": "dnc", "action": "add", "phone": NOTATIONS[2]}
                )
                proc = _start(cfg, log)
                await b.wait_for(lambda: b.result("bl") is not None, timeout=15)
                await campaign(b, "s", "dnc", "start")
                await b.wait_for(lambda: all(b.final("dnc", f"k{i}") for i in range(5)), timeout=20)
                # a SIGKILL may publish an event twice (at least once): what a consumer keeps is what counts
                assert [e["status"] for e in b.unique("dnc", "dnc")] == ["initial", "blacklisted"]
                seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                assert seen.wire == 5 and ledger.sipp_invites(pbx)()[NOT_DIALLED] == 0
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(60) == 0, log.read_text()[-2000:]
            draining = _log_lines(log, "draining")[-1]
            assert draining["in_flight"] == {"voice": 0}, draining
            drained = _log_lines(log, "in-flight attempts drained")[-1]
            assert drained["in_flight_left"] == {"voice": 0}
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
