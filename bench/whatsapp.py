"""WhatsApp benchmark: sends at Meta's top tier, and webhook ingest end to end, beside their limits.

    python -m bench.whatsapp [--sends 3000] [--messages 3000]

(1) Sends: a gateway process (max_mps = 1000) sends templates to the Cloud API stand-in (this process);
    reported: achieved messages/s over the run and its deviation from 1,000/s.
(2) Webhook ingest: signed webhooks for messages the gateway sent, one status per POST and 100 per
    POST, from a load generator with 32 POSTs in flight; measured until every status is an event on the
    broker; p50/p99 response time. The limit: a bare aiohttp handler that only checks the signature and
    answers 200, in its own process, driven by the same generator with the same bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.pipeline import client, queue_in_draft, start_gateway, wait_online
from tests.support.broker import Mosquitto, free_port
from whatsapp.standin import Scenario, StandIn
from whatsapp.webhook import signature, signature_ok

ROOT = Path(__file__).resolve().parents[1]
TOKEN, SECRET, VERIFY = "EAAG-bench", "bench-secret", "bench-verify"
IN_FLIGHT = 32


def bare_server(port: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        if not signature_ok(SECRET.encode(), body, request.headers.get("X-Hub-Signature-256")):
            return web.Response(status=401)
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/webhooks/whatsapp", handler)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def drive(url: str, bodies: list[bytes]) -> tuple[float, list[float]]:
    """POST every body with IN_FLIGHT in flight; returns (seconds, response times in ms)."""
    times: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker(http: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature(SECRET.encode(), body)}
            async with http.post(url, data=body, headers=headers) as r:
                await r.read()
                assert r.status == 200, r.status
            times.append((time.perf_counter() - t0) * 1000)

    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as http, asyncio.TaskGroup() as tg:
        for _ in range(IN_FLIGHT):
            tg.create_task(worker(http))
    return time.perf_counter() - start, times


def bodies_for(standin: StandIn, wamids: list[str], per_post: int) -> list[bytes]:
    statuses = [
        {"id": w, "status": st, "timestamp": "1700000000", "recipient_id": "0"}
        for st in ("sent", "delivered", "read")
        for w in wamids
    ]
    return [
        json.dumps(standin.envelope([{"statuses": statuses[i : i + per_post]}])).encode()
        for i in range(0, len(statuses), per_post)
    ]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        http_port = free_port()
        quiet = Scenario(statuses=())
        async with StandIn(
            access_token=TOKEN,
            app_secret=SECRET,
            default=quiet,
            webhook_url=f"http://127.0.0.1:{http_port}/webhooks/whatsapp",
        ) as standin:
            cfg = work / "telgate.toml"
            cfg.write_text(
                f'[gateway]\nid = "gw-wa-bench"\ndata_dir = "{work / "var"}"\n[bus]\nurl = "{broker.url}"\n'
                f'[http]\nlisten = "127.0.0.1:{http_port}"\n[metrics]\ncampaign_label = false\n'
                f'[whatsapp]\napi_base = "{standin.api_base}"\nphone_number_id = "{standin.phone_number_id}"\n'
                f'access_token = "{TOKEN}"\napp_secret = "{SECRET}"\nverify_token = "{VERIFY}"\nmax_mps = 1000\n'
            )
            gw = start_gateway(cfg, work / "gw.log", rate="1000")
            bare_port = free_port()
            bare = subprocess.Popen(
                [sys.executable, "-m", "bench.whatsapp", "--bare-server", str(bare_port)],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            try:
                async with client(broker.port, "bench-wa") as c:
                    await c.subscribe("telgate/v1/evt/contact/#", qos=1)
                    await c.subscribe("telgate/v1/gateways/+/status", qos=1)
                    await wait_online(c)
                    total = max(args.sends, args.messages * 2)
                    # queue every contact in a draft campaign first, then start it: the send phase is sends only
                    await queue_in_draft(
                        c,
                        "bench",
                        "send",
                        [
                            {
                                "command_id": f"s{i}",
                                "contact_id": f"k{i}",
                                "phone": f"+420601{i:06d}",
                                "template": {"name": "t", "language": "en"},
                            }
                            for i in range(total)
                        ],
                    )
                    deadline = time.monotonic() + 120
                    while len(standin.sent) < total:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"only {len(standin.sent)} of {total} sends arrived")
                        await asyncio.sleep(0.05)
                    ats = sorted(s.at for s in standin.sent)
                    # the first second is the limiter's burst: measure the steady part
                    steady = [t for t in ats if t >= ats[0] + 1.0]
                    if len(steady) < 2:  # a run too short to have a steady part: measure all of it
                        steady = ats
                    rate = (len(steady) - 1) / (steady[-1] - steady[0])
                    report["sends"] = total
                    report["send_rate_per_s"] = round(rate, 1)
                    report["send_rate_deviation_pct"] = round((rate - 1000) / 10, 2)
                    wamids = [s.wamid for s in standin.sent]
                    await asyncio.sleep(1.0)  # every `in_progress` event is out
                    counter = {"events": 0}

                    async def count_events(n: int) -> None:
                        async for m in c.messages:  # the webhook statuses' events (not the sends' in_progress)
                            if str(m.topic).startswith("telgate/v1/evt/contact/") and json.loads(m.payload)[
                                "status"
                            ] in ("sent", "delivered", "read"):  # type: ignore[arg-type]
                                counter["events"] += 1
                                if counter["events"] >= n:
                                    return

                    half = args.messages
                    for shape, per_post, ids in (
                        ("one_per_post", 1, wamids[:half]),
                        ("hundred_per_post", 100, wamids[half : 2 * half]),
                    ):
                        bodies = bodies_for(standin, ids, per_post)
                        n_statuses = 3 * len(ids)
                        counter["events"] = 0
                        start = time.perf_counter()
                        counting = asyncio.create_task(count_events(n_statuses))
                        _, times = await drive(f"http://127.0.0.1:{http_port}/webhooks/whatsapp", bodies)
                        await asyncio.wait_for(counting, 300)
                        elapsed = time.perf_counter() - start
                        bare_s, bare_times = await drive(f"http://127.0.0.1:{bare_port}/webhooks/whatsapp", bodies)
                        report[shape] = {
                            "posts": len(bodies),
                            "statuses": n_statuses,
                            "statuses_per_s_end_to_end": round(n_statuses / elapsed),
                            "p50_ms": round(statistics.median(times), 1),
                            "p99_ms": round(pct(times, 0.99), 1),
                            "bare_statuses_per_s": round(n_statuses / bare_s),
                            "bare_p50_ms": round(statistics.median(bare_times), 1),
                            "bare_p99_ms": round(pct(bare_times, 0.99), 1),
                            "ratio_to_bare": round((n_statuses / elapsed) / (n_statuses / bare_s), 3),
                        }
            finally:
                for proc in (gw, bare):
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
                broker.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if "--bare-server" in sys.argv:  # the limit, in its own process and its own event loop
        bare_server(int(sys.argv[sys.argv.index("--bare-server") + 1]))
    else:
        asyncio.run(main())
