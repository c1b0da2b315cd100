"""Observability against real servers: Prometheus scrapes a gateway that drives voice (SIPp) and WhatsApp
(the Cloud API stand-in) traffic; every shipped dashboard query and alert expression is evaluated
through Prometheus' HTTP API, with the alerts' faults injected; promtool checks the exposition and the
rules; a real InfluxDB 1.x receives the line-protocol writer's points (and an outage only delays
them); the v2 write path meets a local endpoint that checks InfluxData's documented contract."""

from __future__ import annotations

import asyncio
import gzip
import math
import shutil
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import yaml
from aiohttp import web
from line_protocol_parser import parse_line

from gateway.domain.statuses import Channel
from metrics.influx import InfluxTarget, InfluxWriter, Point
from tests.support import ledger, speech
from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway, settings_for
from tests.support.sipp import Sipp
from tests.support.tsdb import InfluxDB, Prometheus
from tests.support.wa import send, wa_rig
from tools.gen_dashboards import queries
from whatsapp.standin import Scenario

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
# a calling window closed now for NIGHT (a Prague number): open only three days from today, local time
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEK = {"weekly": {_DAYS[(datetime.now(ZoneInfo("Europe/Prague")).weekday() + 3) % 7]: ["10:00-11:00"]}}
NIGHT = "+420601000016"
QUIET: tuple[Any, ...] = ()
ONE_ATTEMPT = {"max_attempts": 1}
CUSTOMER = ("420602000000", "420602000001")  # they answer the campaign's messages
OPTED_OUT = "420602000007"  # stops marketing messages, then a MARKETING template is sent to it
MARKETING = {"name": "promo", "language": "cs", "category": "MARKETING"}
# who answered and what they pressed (docs/voice.md §6.3, §6.4): mix.xml's 420605…1 answers and sends no RTP
# (AMD hears nothing: `unknown`/NOAUDIODATA at initial_silence_ms, taken for a person: the prompt, then our
# BYE), 420605…2 presses 1 by SIP INFO 1.5 s
# after its answer, once the 0.3 s prompt has ended and the gather runs
SILENT, KEYS = "+420605000001", "+420605000002"
AMD_SILENT = {"wait": True, "initial_silence_ms": 300}
GATHER = {"prompt": "menu.wav", "gather": {"max_digits": 1, "timeout_s": 5}, "digits": {"1": "confirm"}}
LISTENING = ("AMD verdicts", "AMD decision time", "Digit gathers by finish and outcome", "Digits by source")


def _prompts(folder: Path) -> Path:
    """sip.prompts_dir with the menu the gather's dials play: a 0.3 s tone, 8 kHz mono 16-bit."""
    speech.write_wav(folder / "menu.wav", speech.tone(440, 300, -14))
    return folder


def _influxql(query: str) -> str:
    return query.replace("$timeFilter", "time > now() - 15m").replace("$__interval", "1s")


async def test_dashboards_and_alerts_against_prometheus_and_influxdb(broker: Mosquitto, tmp_path: Path) -> None:
    scenarios = {
        **{f"42060200000{i}": Scenario() for i in range(4)},  # sent, delivered, read
        "420602000004": Scenario(send_error=(400, 131026)),  # sending_failed
        "420602000005": Scenario(statuses=QUIET),  # accepted; its webhooks come during the broker outage
        "420602000006": Scenario(statuses=QUIET),
        "420602000009": Scenario(send_error=(401, 190)),  # account-level: the campaign pauses
    }
    with (
        Sipp("mix.xml", tmp_path / "sipp", calls=100_000, extra=("-d", "600")) as pbx,
        InfluxDB(tmp_path / "influx") as influx,
    ):
        sections = {
            "sip": {
                "pbx": pbx.address,
                "local": "127.0.0.1:0",
                "options_interval_s": 0.5,
                "ring_timeout_s": 5,
                "prompts_dir": str(_prompts(tmp_path / "prompts")),
            },
            "influx": {"url": influx.url, "database": "telgate", "interval_s": 0.5},
        }
        async with (
            backend(broker.url) as b,
            wa_rig(broker.url, tmp_path, scenarios, sections) as (app, standin),
        ):
            target = f"127.0.0.1:{app.http_port}"
            with Prometheus(tmp_path / "prometheus", target, [RULES]) as prom:
                # Prometheus' first scrape comes seconds after it is ready (target discovery is throttled):
                # the counters must be seen at 0 before the traffic, or increase() has nothing to compare
                assert await prom.until("telgate_build_info", timeout=30), "prometheus never scraped"
                # traffic: calls with every outcome of the mix, WhatsApp sends, a rejected and an illegal command,
                # a dead letter
                for i in range(12):
                    await b.send(
                        "dial",
                        {
                            "command_id": f"d{i}",
                            "campaign_id": "calls",
                            "contact_id": f"c{i}",
                            "phone": f"+42060100000{i % 10}",
                            "policy": {"max_attempts": 1},
                        },
                    )
                for i in range(7):
                    await b.send("send", send(f"w{i}", f"m{i}", f"42060200000{i}", "notices", policy=ONE_ATTEMPT))
                await b.send("dial", {"command_id": "bad", "campaign_id": "calls"})  # rejected: no contact_id
                await b.wait_for(lambda: all(b.final("calls", f"c{i}") for i in range(12)), timeout=30)
                # lawful calling (docs/lawful-calling.md): a dial the callee's window holds back, and a predictive
                # call nobody takes within abandon_after_s (0.2 s: SIPp hangs up after its -d) — abandoned, and
                # its campaign pauses at its abandonment limit (one abandon over a minimum sample of one)
                night = {"command_id": "lw", "campaign_id": "night", "action": "start", "window": WEEK}
                await b.send("campaign", night)
                await b.send("dial", {"command_id": "ln", "campaign_id": "night", "contact_id": "n0", "phone": NIGHT})
                pred = {"operators": 1, "abandon_after_s": 0.2, "abandon_min_answers": 1}
                await b.send("campaign", {"command_id": "lp", "campaign_id": "pred", "action": "start", **pred})
                dial = {"command_id": "lpd", "campaign_id": "pred", "contact_id": "p0", "phone": "+420601000015"}
                await b.send("dial", {**dial, "mode": "predictive", "policy": {"max_attempts": 1}})
                await b.wait_for(
                    lambda: (
                        b.statuses("night", "n0")[-1:] == ["retry_scheduled"]
                        and b.statuses("pred", "p0")[-1:] == ["abandoned"]
                        and any(c["campaign_id"] == "pred" and c["status"] == "paused" for c in b.campaigns)
                    ),
                    timeout=20,
                )
                # who answered and what they pressed: a held AMD dial to the silent callee and a prompt with a
                # gather to the one that presses 1, twice. The first round makes each campaign's series (a
                # counter is born at its first count), Prometheus scrapes them, and the second round is what
                # the panels' increase() and rate() see
                for n in range(2):
                    if n:
                        for series in ("telgate_amd_decision_seconds_count", "telgate_dtmf_digits_total"):
                            assert await prom.until(f'{series}{{campaign="listen"}}', timeout=15), series
                    amd = {"command_id": f"la{n}", "campaign_id": "listen", "contact_id": f"a{n}", "phone": SILENT}
                    await b.send("dial", {**amd, "amd": AMD_SILENT, "prompt": "menu.wav", "policy": ONE_ATTEMPT})
                    keys = {"command_id": f"lg{n}", "campaign_id": "listen", "contact_id": f"g{n}", "phone": KEYS}
                    await b.send("dial", {**keys, **GATHER, "policy": ONE_ATTEMPT})
                    await b.wait_for(lambda n=n: b.final("listen", f"a{n}") and b.final("listen", f"g{n}"), timeout=20)
                    signals = [e.get("signal", {}) for e in b.unique("listen", f"a{n}")]
                    verdicts = [(s["answered_by"], s["amd_cause"]) for s in signals if s.get("answered_by")]
                    assert verdicts and set(verdicts) == {("unknown", "NOAUDIODATA")}, signals
                    assert b.statuses("listen", f"a{n}")[-1] == "success"
                    gathered = b.unique("listen", f"g{n}")[-1]
                    assert gathered["status"] == "success", b.unique("listen", f"g{n}")
                    assert (gathered["signal"]["digits"], gathered["signal"]["outcome"]) == ("1", "confirm")
                await b.wait_for(
                    lambda: (
                        all(b.statuses("notices", f"m{i}")[-1:] == ["read"] for i in range(4))
                        and b.final("notices", "m4")
                        and all(b.statuses("notices", f"m{i}")[-1:] == ["in_progress"] for i in (5, 6))
                    ),
                    timeout=20,
                )
                # what customers and Meta send back: a quick-reply tap on m0's message and a STOP on m1's (replied,
                # with their outcomes), a number that stopped marketing messages and a MARKETING send to it
                # (refused before the Cloud API), a template rated RED, the business number downgraded
                wamids = {s.to: s.wamid for s in standin.sent}
                await standin.post_messages(
                    [
                        standin.button_message(CUSTOMER[0], "CONFIRM", "Confirm", context_id=wamids[CUSTOMER[0]]),
                        standin.text_message(CUSTOMER[1], "STOP", context_id=wamids[CUSTOMER[1]]),
                    ]
                )
                await standin.post_notice("user_preferences", standin.user_preferences_value(OPTED_OUT, "stop"))
                await b.wait_for(lambda: any(n.get("effect") == "marketing_opt_out" for n in b.notices))
                await b.send("send", send("mk", "p0", OPTED_OUT, "promo", template=MARKETING, policy=ONE_ATTEMPT))
                await standin.post_notice(
                    "message_template_quality_update",
                    {
                        "previous_quality_score": "GREEN",
                        "new_quality_score": "RED",
                        "message_template_id": 1000000000000002,
                        "message_template_name": "promo",
                        "message_template_language": "cs",
                    },
                )
                await standin.post_notice(
                    "phone_number_quality_update",
                    {
                        "display_phone_number": standin.display_phone_number,
                        "event": "DOWNGRADE",
                        "old_limit": "TIER_10K",
                        "current_limit": "TIER_1K",
                    },
                )
                await b.wait_for(
                    lambda: (
                        [b.statuses("notices", f"m{i}")[-1:] for i in (0, 1)] == [["replied"], ["replied"]]
                        and b.final("promo", "p0")
                        and len(b.notices) == 3
                    ),
                    timeout=20,
                )
                outcomes = [b.unique("notices", f"m{i}")[-1]["signal"]["reply"]["outcome"] for i in (0, 1)]
                assert outcomes[1] == "opt_out", outcomes
                assert b.statuses("promo", "p0")[-1] == "blacklisted"
                await b.send(
                    "operator", {"command_id": "op", "campaign_id": "calls", "contact_id": "c0", "signal": "connected"}
                )  # c0 ended: an illegal transition, refused and counted
                await b.send("send", send("acct", "a0", "420602000009", "account", policy=ONE_ATTEMPT))
                await b.wait_for(lambda: b.final("account", "a0"))
                # an outbox row that can never be published (a wildcard in its topic, as a bug or a bad
                # Response Topic leaves behind): moved to the dead letters and counted, the alert's fault
                await app.store.run(lambda t: t.add_outbox("telgate/v1/evt/bad/#", b"{}"))
                app.bus.notify()
                await b.wait_for(
                    lambda: (
                        app.recorder.registry.get_sample_value(
                            "telgate_outbox_dead_letters_total", {"reason": "invalid_topic"}
                        )
                        == 1
                    ),
                    timeout=10,
                )
                # the ledger, now that the traffic has settled (every call final, every send answered): SIPp
                # got one INVITE per call (two contacts share each of the numbers ending 0 and 1), the stand-in
                # one send request per contact, errors included; the rejected command and the refused MARKETING
                # send put nothing on the wire
                calls_seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                assert calls_seen.compared == 18 and calls_seen.attempts == 17 and calls_seen.wire == 17
                sends_seen = await ledger.check(b, "whatsapp", ledger.standin_sends(standin.received), by="contact")
                assert sends_seen.compared == 9 and sends_seen.attempts == 8 and sends_seen.wire == 8

                metrics_text = await asyncio.to_thread(_get_text, f"http://{target}/metrics")
                check = subprocess.run(
                    ["promtool", "check", "metrics"], input=metrics_text, capture_output=True, text=True, check=False
                )
                assert check.returncode == 0, check.stdout + check.stderr

                # faults: the PBX goes away (OPTIONS unanswered), then the broker, while webhooks keep coming
                assert pbx.proc is not None
                pbx.proc.kill()
                await b.wait_for(
                    lambda: app.recorder.registry.get_sample_value("telgate_pbx_up", {"pbx": pbx.address}) == 0,
                    timeout=10,
                )
                # Prometheus has scraped the PBX down before the broker goes
                assert await prom.until(f'telgate_pbx_up{{pbx="{pbx.address}"}} == 0', timeout=15)
                broker.stop()
                assert await prom.until("telgate_bus_connected == 0", timeout=15), "no scrape with the bus down"
                grown = (await app.store.read(lambda t: t.outbox_stats()))[0]
                for sent in [s for s in standin.sent if s.to in ("420602000005", "420602000006")]:
                    for status in ("sent", "delivered"):
                        payload = standin.envelope(
                            [standin._status(sent.wamid, sent.to, status, None, sent.callback_data)]
                        )
                        assert await standin.post_webhook(payload) == 200  # answered after its commit
                        # a scrape between each: the outbox grows step by step
                        grown = max(grown + 1, (await app.store.read(lambda t: t.outbox_stats()))[0])
                        assert await prom.until(f"telgate_outbox_pending >= {grown}", timeout=15), grown

                empty: list[str] = []
                for board, panel, expr in queries("prometheus"):
                    if not await prom.until(expr, timeout=5):
                        empty.append(f"{board} / {panel}: {expr}")
                for group in yaml.safe_load(RULES.read_text())["groups"]:
                    if group["name"] == "telgate-cluster":  # one instance loses no member: test_deploy's cluster
                        continue
                    for rule in group["rules"]:
                        if not await prom.until(rule["expr"], timeout=5):
                            empty.append(f"alert {rule['alert']}: {rule['expr']}")
                # the listening panels show the second round, not just a series: counts above 0, decision
                # times inside the verdicts' bucket (0.3 s: 0 to 0.5 s)
                for board, panel, expr in queries("prometheus"):
                    if panel not in LISTENING:
                        continue
                    values = [float(r["value"][1]) for r in prom.query(expr)]
                    seconds = panel == "AMD decision time"
                    if not values or not all(
                        math.isfinite(v) and (0 < v <= 0.5 if seconds else v >= 0.99) for v in values
                    ):
                        empty.append(f"{board} / {panel}: {expr} = {values}")
                samples = prom.query("telgate_outbox_pending[5m]")
                broker.start()
                assert not empty, "queries without data:\n" + "\n".join(empty) + f"\noutbox samples: {samples}"
                # and after the faults: the webhooks of the outage started no send, nothing was dialled again
                sends_after = await ledger.check(b, "whatsapp", ledger.standin_sends(standin.received), by="contact")
                assert sends_after.attempts == 8 and sends_after.wire == 8
                assert (await ledger.check(b, "voice", ledger.sipp_invites(pbx))).wire == 17

            # InfluxDB: every query of the InfluxDB dashboards returns data. Nothing to wait for: the gateway
            # has stopped, so whatever its writer wrote (every 0.5 s while the traffic ran) is all there will be
            missing = []
            for board, panel, q in queries("influxdb"):
                series = await asyncio.to_thread(influx.series, _influxql(q))
                if not series or not any(v is not None for s in series for row in s["values"] for v in row[1:]):
                    missing.append(f"{board} / {panel}: {q}")
            assert not missing, "InfluxQL without data:\n" + "\n".join(missing)
            calls = await asyncio.to_thread(
                influx.series,
                """SELECT last("attempts"), last("answered") FROM telgate_calls WHERE campaign = 'calls'""",
            )
            assert calls[0]["values"][0][1:] == [12, 8]  # digits 0-5 answer: 0-5, and 0 and 1 of the second ten
            wa = await asyncio.to_thread(
                influx.series,
                'SELECT last("sent"), last("read"), last("replied"), last("reply_rate") FROM telgate_whatsapp'
                " WHERE campaign = 'notices'",
            )
            # m0-m3 and m5-m6 were sent (m4 failed), m0-m3 read: m0 and m1 replied (a reply implies read)
            assert wa[0]["values"][0][1:] == [6, 4, 2, pytest.approx(2 / 6)]


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def test_influx_outage_only_delays_points(broker: Mosquitto, tmp_path: Path) -> None:
    with InfluxDB(tmp_path / "influx") as influx:
        settings = settings_for(broker.url, tmp_path, influx={"url": influx.url, "interval_s": 0.3})
        async with gateway(settings, channels=(Channel.VOICE,)) as app:
            assert app.influx is not None
            async with asyncio.timeout(10):  # points are written before the outage
                while not app.influx.stats.written_lines:
                    await asyncio.sleep(0.05)
            influx.stop()
            down_from = int(time.time() * 1000)
            await asyncio.sleep(2.0)  # kept: the outage itself, whose points (one per 0.3 s) are checked below
            down_to = int(time.time() * 1000)
            assert app.influx.stats.failed_writes >= 1 and app.influx.pending > 0
            influx.start()
            deadline = time.monotonic() + 15
            while app.influx.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert app.influx.pending == 0 and app.influx.stats.dropped_lines == 0
        rows = influx.series(
            f"SELECT count(outbox_pending) FROM telgate_gateway WHERE time >= {down_from}ms AND time <= {down_to}ms"
        )
        assert rows and rows[0]["values"][0][1] >= 4  # the points of the outage arrived afterwards


async def test_v2_write_meets_the_documented_contract(tmp_path: Path) -> None:
    """POST /api/v2/write?org=&bucket=&precision=ms, `Authorization: Token …`, gzip body, 204 on success."""
    seen: list[list[dict[str, Any]]] = []

    async def write(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Token s3cret":
            return web.json_response({"code": "unauthorized", "message": "unauthorized access"}, status=401)
        if request.query.get("org") != "acme" or request.query.get("bucket") != "telgate":
            return web.json_response({"code": "invalid", "message": "org and bucket are required"}, status=400)
        if request.query.get("precision") not in ("ns", "us", "ms", "s"):
            return web.json_response({"code": "invalid", "message": "bad precision"}, status=400)
        if request.headers.get("Content-Encoding") != "gzip":
            return web.json_response({"code": "invalid", "message": "expected a gzip body"}, status=400)
        raw = await request.read()  # aiohttp's server inflates a gzip request body itself
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        lines = [line for line in raw.decode().split("\n") if line]
        if len(lines) > 5000:
            return web.json_response({"code": "invalid", "message": "batch too large"}, status=413)
        seen.append([parse_line(line.encode()) for line in lines])
        return web.Response(status=204)

    server = web.Application()
    server.router.add_post("/api/v2/write", write)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        n = 12_000
        points = [
            Point("telgate_contacts", {"gateway": "gw 1", "campaign": f"c,{i}"}, {"count": i}, i) for i in range(n)
        ]
        for token, expect in (("wrong", False), ("s3cret", True)):
            target = InfluxTarget(f"http://127.0.0.1:{port}", api="v2", bucket="telgate", org="acme", token=token)
            writer = InfluxWriter(target, lambda _ms: points)
            writer.collect(0)
            async with aiohttp.ClientSession() as session:
                ok = await writer.flush(session)
            if not expect:
                # a 4xx is a refusal of the batch, not an outage: dropped, counted and logged, not retried forever
                assert (
                    ok
                    and writer.stats.refused_lines == n
                    and writer.pending == 0
                    and "401" in str(writer.stats.last_error)
                )
        assert [len(batch) for batch in seen] == [5000, 5000, 2000]
        assert seen[0][7] == {
            "measurement": "telgate_contacts",
            "tags": {"campaign": "c,7", "gateway": "gw 1"},
            "fields": {"count": 7},
            "time": 7,
        }
    finally:
        await runner.cleanup()


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed (apt-get install prometheus; bash .ci/run does)"
    folder = RULES.parent
    check = subprocess.run([tool, "check", "rules", "alerts.yml"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "alerts_test.yml"], cwd=folder, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr


def test_dashboards_are_generated_from_the_panel_lists() -> None:
    out = subprocess.run([sys.executable, "-m", "tools.gen_dashboards", "--check"], cwd=ROOT, capture_output=True)
    assert out.returncode == 0, out.stdout.decode()
