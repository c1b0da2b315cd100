"""Voice benchmark: telgate dialling a SIPp UAS on loopback, beside SIPp's own UAC (the limit).

    python -m bench.voice [--calls 2000] [--rates 100,200,400]

For each rate, a gateway process (max_cps = rate) dials `--calls` contacts queued in a draft campaign
that is then started; the SIPp UAS answers every INVITE 100 + 486 (+ ACK). Reported: sustained
attempts/s from the start to the last final event, that every contact ended `completed_without_answer`
with sip_code 486 (no lost or wrong status), and the gateway's RSS. The limit: SIPp's built-in UAC
against the same UAS scenario, unthrottled, for the same number of calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.pipeline import client, queue_in_draft, rss_kib, start_gateway, wait_online
from tests.support.broker import Mosquitto, free_port
from tests.support.sipp import SCENARIOS, free_udp_port

ROOT = Path(__file__).resolve().parents[1]


def sipp_uas(port: int, calls: int, workdir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(SCENARIOS / "busy_486.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-nostdin",
            "-m",
            str(calls),
            "-timeout",
            "300",
            "-max_socket",
            "10000",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def sipp_limit(calls: int, workdir: Path) -> float:
    port = free_udp_port()
    uas = sipp_uas(port, calls, workdir)
    time.sleep(0.3)
    start = time.perf_counter()
    uac = subprocess.run(
        [
            "sipp",
            "-sn",
            "uac",
            "-i",
            "127.0.0.1",
            "-p",
            str(free_udp_port()),
            f"127.0.0.1:{port}",
            "-m",
            str(calls),
            "-r",
            "10000",
            "-l",
            "5000",
            "-nostdin",
            "-timeout",
            "300",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    elapsed = time.perf_counter() - start
    uas.kill()
    uas.wait()
    # the built-in uac expects 180/200; against a 486 UAS each call fails fast: calls/s is still the SIP rate
    del uac
    return calls / elapsed


async def run_rate(broker: Mosquitto, rate: int, calls: int, workdir: Path) -> dict[str, Any]:
    port = free_udp_port()
    uas = sipp_uas(port, calls, workdir)
    cfg = workdir / f"voice-{rate}.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-voice-{rate}"\ndata_dir = "{workdir / f"var-{rate}"}"\n[bus]\nurl = "{broker.url}"\n'
        f'client_id = "telgate-voice-{rate}"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
        f"[metrics]\ncampaign_label = false\n[retry]\nmax_attempts = 1\n"
        f'[sip]\npbx = "127.0.0.1:{port}"\nlocal = "127.0.0.1:0"\nmax_cps = {rate}\nmax_concurrent_calls = 20000\n'
    )
    gw = start_gateway(cfg, workdir / f"gw-{rate}.log", rate="1000")
    try:
        async with client(broker.port, f"bench-voice-{rate}") as c:
            await c.subscribe("telgate/v1/evt/#", qos=1)
            await c.subscribe(f"telgate/v1/gateways/gw-voice-{rate}/status", qos=1)
            await wait_online(c)
            camp = f"voice{rate}"
            await queue_in_draft(
                c,
                camp,
                "dial",
                [
                    {"command_id": f"{camp}-{i}", "contact_id": f"k{i}", "phone": f"+420601{i:06d}"}
                    for i in range(calls)
                ],
            )
            start = time.perf_counter()
            finals: dict[str, dict[str, Any]] = {}
            peak_rss = 0
            async for m in c.messages:
                if not str(m.topic).startswith("telgate/v1/evt/contact/"):
                    continue
                e = json.loads(m.payload)  # type: ignore[arg-type]
                if e["final"]:
                    finals[e["contact_id"]] = e
                    if len(finals) % 200 == 0:
                        peak_rss = max(peak_rss, rss_kib(gw.pid))
                    if len(finals) >= calls:
                        break
            elapsed = time.perf_counter() - start
            wrong = [
                k
                for k, e in finals.items()
                if e["status"] != "completed_without_answer" or e["signal"].get("sip_code") != 486
            ]
            return {
                "rate_asked": rate,
                "attempts_per_s": round(calls / elapsed, 1),
                "calls": calls,
                "wrong_or_lost": len(wrong) + calls - len(finals),
                "gateway_rss_kib": max(peak_rss, rss_kib(gw.pid)),
            }
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        uas.kill()
        uas.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rates", default="100,200,400")
    args = parser.parse_args()
    report: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        try:
            for rate in (int(r) for r in args.rates.split(",")):
                report["runs"].append(await run_rate(broker, rate, args.calls, work))
            report["sipp_uac_limit_calls_per_s"] = round(sipp_limit(args.calls, work), 1)
        finally:
            broker.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
