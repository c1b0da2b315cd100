"""Faults with real processes: the broker restarted mid-stream, the gateway SIGKILLed mid-campaign."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from gateway.domain.statuses import Channel
from gateway.store import open_store
from tests.support import harness, ledger
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, gateway, settings_for, store_toml
from tests.support.scripted import ScriptedPort
from tests.support.sipp import Sipp

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]
ROOT = Path(__file__).resolve().parents[2]


def check_stream(b: Backend) -> int:
    """Every contact's events form 1..n with no gap; a repeat carries the same event_id. Returns repeats."""
    repeats = 0
    by_seq: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    for e in b.events:
        key = (e["campaign_id"], e["contact_id"])
        seen = by_seq[key].get(e["sequence"])
        if seen is not None:
            assert seen == e["event_id"], f"{key} sequence {e['sequence']} published twice with different ids"
            repeats += 1
        by_seq[key][e["sequence"]] = e["event_id"]
    for key, seqs in by_seq.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"gap in {key}: {sorted(seqs)}"
    return repeats


async def test_broker_restart_mid_stream_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    n_voice, n_wa = 150, 60
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path), delay_s=0.05) as app:
        for i in range(n_voice):
            await b.send(
                "dial", {"command_id": f"d{i}", "campaign_id": "v", "contact_id": f"k{i}", "phone": "+420601234560"}
            )
        for i in range(n_wa):
            await b.send(
                "send",
                {
                    "command_id": f"s{i}",
                    "campaign_id": "w",
                    "contact_id": f"k{i}",
                    "phone": "+420601234560",
                    "template": {"name": "t", "language": "en"},
                },
            )
        await b.wait_for(lambda: len(b.events) >= 300, timeout=30)
        broker.stop()  # SIGTERM: the broker keeps what it acknowledged (persistence), loses its connections
        await b.wait_for(lambda: not app.bus.connected.is_set())  # the gateway has lost its connection
        broker.start()
        await b.wait_for(
            lambda: (
                all(b.final("v", f"k{i}") for i in range(n_voice)) and all(b.final("w", f"k{i}") for i in range(n_wa))
            ),
            timeout=60,
        )
        check_stream(b)
        assert all(len({e["sequence"] for e in b.by_contact[("v", f"k{i}")]}) == 4 for i in range(n_voice))
        assert all(len({e["sequence"] for e in b.by_contact[("w", f"k{i}")]}) == 5 for i in range(n_wa))
        # the ledger: the scripted ports dialled/sent once per contact, as the events say, across the outage
        for channel, n in ((Channel.VOICE, n_voice), (Channel.WHATSAPP, n_wa)):
            port = app.ports[channel]
            assert isinstance(port, ScriptedPort)
            seen = await ledger.check(b, channel.value, ledger.scripted_started(port.started), by="contact")
            assert seen.compared == n and seen.attempts == n and seen.wire == n


def _sent(message: str, first_line: str) -> bool:
    """A message of SIPp's record (`-trace_msg`) that SIPp sent, whose first line starts with `first_line`."""
    return "message sent" in message.split("\n", 1)[0] and f"\n{first_line}" in message


def _start_gateway(cfg: Path, log: Path, record: Path | None = None) -> subprocess.Popen[bytes]:
    args = ["-m", "tests.support.run_scripted", str(cfg), "0.3"]
    if record is not None:  # the scripted ports' record of what they carried out outlives each process
        args += ["1000", str(record)]
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_gateway_sigkill_and_restart(broker: Mosquitto, tmp_path: Path) -> None:
    data = tmp_path / "gw"
    cfg = tmp_path / "telgate.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-crash"\ndata_dir = "{data}"\n[bus]\nurl = "{broker.url}"\nclient_id = "telgate-crash"\n'
        f'[http]\nlisten = "127.0.0.1:0"\n[retry]\nmax_attempts = 2\ndelays_s = [60]\n{store_toml()}'
    )
    log = tmp_path / "gateway.log"
    record = tmp_path / "scripted-started.txt"  # both runs append to it
    proc = _start_gateway(cfg, log, record)
    try:
        async with backend(broker.url) as b:
            await b.wait_for(lambda: b.presence.get("gw-crash") == "online")

            def cmd(cid: str, contact: str, phone: str, **kw: Any) -> dict[str, Any]:
                return {"command_id": cid, "campaign_id": "crash", "contact_id": contact, "phone": phone, **kw}

            await b.send("dial", cmd("c1", "held", "+420601234565"))  # answered and held
            await b.send("dial", cmd("c2", "ring", "+420601234566"))  # rings until cancelled
            await b.send("dial", cmd("c3", "busy", "+420601234561", policy={"delays_s": [6]}))
            await b.send("dial", cmd("c4", "pv", "+420601234560", mode="preview", bcw_s=6))
            await b.send(
                "operator", {"command_id": "o1", "campaign_id": "crash", "contact_id": "pv", "signal": "assigned"}
            )
            await b.send(
                "operator", {"command_id": "o2", "campaign_id": "crash", "contact_id": "pv", "signal": "accepted"}
            )
            await b.wait_for(
                lambda: (
                    b.statuses("crash", "held")[-1:] == ["call_in_progress"]
                    and b.statuses("crash", "ring")[-1:] == ["calling"]
                    and b.statuses("crash", "busy")[-1:] == ["retry_scheduled"]
                    and b.statuses("crash", "pv")[-1:] == ["bcw"]
                ),
                timeout=20,
            )
            await b.send("dial", cmd("c5", "late", "+420601234560"))
            await b.wait_for(lambda: "calling" in b.statuses("crash", "late"), timeout=10)
            broker.stop()  # the rest of "late" is committed while nobody can take it
            store = open_store(harness.STORE_URL or f"sqlite:///{data / 'telgate.db'}")  # the gateway's store
            await store.open()
            try:
                # the gateway's own record: "late" committed to its end (its 4th event, success), unpublished
                async with asyncio.timeout(10):
                    while (late := await store.read(lambda t: t.get_contact(("crash", "late")))) is None or (
                        late.sequence < 4
                    ):
                        await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                pending, _ = await store.read(lambda t: t.outbox_stats())
            finally:
                await store.close()
            assert pending >= 2, "the events committed while the broker was away wait in the outbox"

            broker.start()
            b.presence.clear()
            proc = _start_gateway(cfg, log, record)
            await b.wait_for(lambda: b.presence.get("gw-crash") == "online")
            await b.wait_for(
                lambda: (
                    b.final("crash", "held")
                    and b.final("crash", "busy")
                    and b.final("crash", "pv")
                    and b.final("crash", "late")
                    and b.statuses("crash", "ring")[-1:] == ["retry_scheduled"]
                ),
                timeout=30,
            )
            check_stream(b)
            held = b.by_contact[("crash", "held")][-1]
            assert held["status"] == "success" and held["signal"]["kind"] == "gateway_restart"
            ring = b.by_contact[("crash", "ring")][-1]
            assert ring["signal"]["kind"] == "gateway_restart" and ring["attempt"] == 1
            assert b.statuses("crash", "busy")[-2:] == ["calling", "completed_without_answer"]
            assert b.by_contact[("crash", "busy")][-1]["attempt"] == 2
            assert b.statuses("crash", "pv")[-3:] == ["calling", "call_in_progress", "success"]
            assert sorted({e["sequence"] for e in b.by_contact[("crash", "late")]}) == [1, 2, 3, 4]
            assert b.statuses("crash", "late")[-1] == "success"
            # the ledger across the restart: held, ring, pv, late dialled once, busy twice (its retry in the
            # second run); the restart itself dialled nobody again
            seen = await ledger.check(b, "voice", ledger.scripted_file(record), by="contact")
            assert seen.compared == 5 and seen.attempts == 6 and seen.wire == 6
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()[-2000:]


async def test_sigkill_during_live_sip_calls_applies_the_restart_rule(broker: Mosquitto, tmp_path: Path) -> None:
    """§9 with real SIP: one call answered and held, one ringing, both at SIPp; the gateway dies."""
    data = tmp_path / "gw"
    cfg = tmp_path / "telgate.toml"
    with Sipp("hold_or_ring.xml", tmp_path / "sipp", calls=2) as pbx:
        cfg.write_text(
            f'[gateway]\nid = "gw-sip"\ndata_dir = "{data}"\n[bus]\nurl = "{broker.url}"\nclient_id = "telgate-sip"\n'
            f'[http]\nlisten = "127.0.0.1:0"\n[retry]\nmax_attempts = 2\ndelays_s = [60]\n'
            f'[sip]\npbx = "{pbx.address}"\nlocal = "127.0.0.1:0"\nring_timeout_s = 120\n{store_toml()}'
        )
        log = tmp_path / "gateway.log"
        proc = _start_gateway(cfg, log)
        try:
            async with backend(broker.url) as b:
                await b.wait_for(lambda: b.presence.get("gw-sip") == "online")
                for contact, phone in (("held", "+420601234565"), ("ring", "+420601234566")):
                    await b.send(
                        "dial", {"command_id": contact, "campaign_id": "s", "contact_id": contact, "phone": phone}
                    )
                await b.wait_for(
                    lambda: (
                        b.statuses("s", "held")[-1:] == ["call_in_progress"]
                        and b.statuses("s", "ring")[-1:] == ["calling"]
                    ),
                    timeout=15,
                )
                # the ringing call has had its 180: SIPp's record says it sent one for each call
                async with asyncio.timeout(10):
                    while sum(1 for m in pbx.messages() if _sent(m, "SIP/2.0 180 ")) < 2:
                        await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = _start_gateway(cfg, log)
                await b.wait_for(
                    lambda: b.final("s", "held") and b.statuses("s", "ring")[-1:] == ["retry_scheduled"], timeout=20
                )
                check_stream(b)
                held = b.unique("s", "held")[-1]
                assert held["status"] == "success" and held["signal"]["kind"] == "gateway_restart"
                ring = b.unique("s", "ring")[-1]
                assert ring["signal"]["kind"] == "gateway_restart" and ring["attempt"] == 1 and ring["retry_at"]
                assert [e["status"] for e in b.unique("s", "ring")] == ["initial", "calling", "retry_scheduled"]
                # the ledger across the restart: SIPp got one INVITE per contact, and none from the new process
                seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                assert seen.compared == 2 and seen.attempts == 2 and seen.wire == 2
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0, log.read_text()[-2000:]
