"""The real `telgate` process: SIGTERM drain, presence, HTTP endpoints, exit codes (SPEC §1, §7)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.contract.topics import Topics
from gateway.domain.statuses import Channel
from tests.support.broker import Mosquitto, free_port
from tests.support.harness import backend, gateway, scripted_ledger, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]
ROOT = Path(__file__).resolve().parents[2]


def telgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def test_check_config_masks_secrets_and_names_bad_key(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text('[bus]\npassword = "hunter2"\n[whatsapp]\naccess_token = "EAAG-secret"\n')
    out = telgate("check-config", "--config", str(cfg))
    assert out.returncode == 0 and "hunter2" not in out.stdout and "EAAG-secret" not in out.stdout
    assert json.loads(out.stdout)["bus"]["password"] == "********"
    bad = telgate("check-config", "--config", str(cfg), env={"TELGATE_SIP__MAX_CPS": "fast"})
    assert bad.returncode == 2 and "sip.max_cps" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    cfg.write_text("[nonsense]\nx = 1\n")
    bad = telgate("check-config", "--config", str(cfg))
    assert bad.returncode == 2 and "nonsense" in bad.stderr
    missing = telgate("check-config", "--config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2


def test_run_refuses_an_unreadable_tls_ca_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[sip]\npbx = "pbx.example"\ntransport = "tls"\nca_file = "{tmp_path / "absent.pem"}"\n')
    bad = telgate("run", "--config", str(cfg))
    assert bad.returncode == 2 and "sip.ca_file" in bad.stderr and "cannot read" in bad.stderr, bad.stderr


def test_docs_are_generated_from_the_models() -> None:
    out = telgate("asyncapi")
    assert out.returncode == 0
    doc = json.loads(out.stdout)
    assert doc["asyncapi"].startswith("3.") and "ContactStatusEvent" in doc["components"]["schemas"]
    assert json.loads((ROOT / "docs" / "asyncapi.json").read_text()) == doc, "run: python -m tools.gen_docs"
    from gateway.contract.asyncapi import schemas

    for name, schema in schemas().items():
        assert json.loads((ROOT / "docs" / "schemas" / f"{name}.json").read_text()) == schema, (
            "run: python -m tools.gen_docs"
        )
    from tools.gen_docs import statuses_markdown

    # the status tables (labels per profile, final) come from gateway/domain/statuses.py, not by hand
    assert (ROOT / "docs" / "statuses.md").read_text() == statuses_markdown(), "run: python -m tools.gen_docs"


async def test_sigterm_drains_and_publishes_offline(broker: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TELGATE_GATEWAY__ID": "gw-term",
        "TELGATE_GATEWAY__DATA_DIR": str(tmp_path / "var"),
        "TELGATE_BUS__URL": broker.url,
        "TELGATE_HTTP__LISTEN": f"127.0.0.1:{port}",
    }
    async with backend(broker.url) as b:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await b.wait_for(lambda: b.presence.get("gw-term") == "online", timeout=20)
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{port}"
                async with http.get(f"{base}/healthz") as r:
                    assert r.status == 200
                async with http.get(f"{base}/readyz") as r:
                    body = await r.json()
                    assert r.status == 200 and body["dependencies"] == {"store": "open", "bus": "connected"}
                await b.send(
                    "dial", {"command_id": "d1", "campaign_id": "c", "contact_id": "k", "phone": "+420601234567"}
                )
                await b.wait_for(lambda: b.result("d1") is not None)
                assert b.result("d1")["error"]["code"] == "channel_disabled"  # type: ignore[index]
                async with http.get(f"{base}/metrics") as r:
                    text = await r.text()
                    assert 'telgate_commands_total{kind="dial",result="rejected"} 1.0' in text
                    assert "telgate_bus_connected 1.0" in text and "telgate_build_info" in text
                async with http.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}) as r:
                    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
                    assert (await r.text()).rstrip().endswith("# EOF")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            await b.wait_for(lambda: b.presence.get("gw-term") == "offline", timeout=10)
            lines = [json.loads(line) for line in (proc.stderr.read() if proc.stderr else b"").splitlines()]
            assert any(line["msg"] == "draining" for line in lines) and all("ts" in line for line in lines)
        finally:
            if proc.poll() is None:
                proc.kill()


async def test_readyz_follows_the_bus_and_read_api(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        await b.send("dial", {"command_id": "d1", "campaign_id": "c", "contact_id": "k", "phone": "+420601234560"})
        await b.wait_for(lambda: b.final("c", "k"))
        seen = await scripted_ledger(b, app, Channel.VOICE)  # the wire ledger (SPEC §9): one dial, one attempt
        assert (seen.compared, seen.attempts, seen.wire) == (1, 1, 1)
        base = f"http://127.0.0.1:{app.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/v1/campaigns/c/contacts/k") as r:
                body = await r.json()
                assert r.status == 200 and body["status"] == "success" and body["final"] is True
                assert [e["status"] for e in body["events"]] == ["initial", "calling", "call_in_progress", "success"]
            async with http.get(f"{base}/v1/campaigns/c/contacts/nobody") as r:
                assert r.status == 404
            broker.stop()
            # the gateway sees the connection go (the broker's FIN): wait for readyz to say so, not a guess
            async with asyncio.timeout(10):
                while True:
                    async with http.get(f"{base}/readyz") as r:
                        if r.status == 503:
                            assert (await r.json())["dependencies"]["bus"] == "disconnected"
                            break
                    await asyncio.sleep(0.05)
            broker.start()
            await asyncio.wait_for(app.bus.connected.wait(), 15)
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200


async def test_watch_shows_contacts_per_status_from_the_bus(broker: Mosquitto, tmp_path: Path) -> None:
    env = {**os.environ, "TELGATE_BUS__URL": broker.url, "COLUMNS": "160"}
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        topic = Topics(app.settings.bus.topic_prefix).contacts(None)
        before = len(broker.subscriptions(topic))
        watch = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "watch",
            "--seconds",
            "4",
            env=env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        # its subscription in place (the broker's log; its SUBACK is the watch process's own)
        await broker.subscribed(topic, count=before + 1)
        for i, phone in enumerate(["+420601234560", "+420601234564", "+420601234560"]):
            await b.send(
                "dial", {"command_id": f"w{i}", "campaign_id": "watched", "contact_id": f"k{i}", "phone": phone}
            )
        out, err = await asyncio.wait_for(watch.communicate(), 20)
        assert watch.returncode == 0, err.decode()
        text = out.decode()
        assert "watched" in text and "success=2" in text and "invalid_record=1" in text
        # the wire ledger (SPEC §9): three dials — the …4 number was dialled too (a 404 made it invalid_record)
        seen = await scripted_ledger(b, app, Channel.VOICE)
        assert (seen.compared, seen.attempts, seen.wire) == (3, 3, 3)
