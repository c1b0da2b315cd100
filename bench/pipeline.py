"""Pipeline benchmark: commands → decisions → the store → events on a real Mosquitto, on SQLite and on
PostgreSQL side by side in one run, with its limit: the same number of bare QoS 1 publishes through
aiomqtt.

The gateway runs as its own process (tests/support/run_scripted.py: scripted channels that answer at
once), the load generator and the collector in this one, as a backend would be. PostgreSQL is a private
server on its defaults (fsync and synchronous_commit on, as SQLite's synchronous=FULL), started for the
run (tests/support/postgres.py). CPU seconds per 1,000 status events are split by process: the gateway,
PostgreSQL (the postmaster and its backends) and the broker, so the cost per event is visible.

    python -m bench.pipeline [--contacts 5000] [--stores sqlite,postgres] [--rounds 1] [--queued 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.broker import Mosquitto, free_port
from tests.support.postgres import running_postgres

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 64


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, its reaped children included (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime stime cutime cstime


def tree_cpu_s(root: int) -> float:
    """The CPU of `root` and of its live children (PostgreSQL: the postmaster and its backends)."""
    total = cpu_s(root)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == root:
                total += cpu_s(int(entry.name))
    return total


def client(port: int, name: str, clean: bool = True) -> aiomqtt.Client:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 600
    c = aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=name,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=clean,
        properties=props,
        max_inflight_messages=WINDOW,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    )
    c.pending_calls_threshold = WINDOW * 4
    return c


async def publish_all(
    c: aiomqtt.Client, items: list[tuple[str, bytes]], stamps: list[float] | None = None, rate: float | None = None
) -> None:
    """Publish with WINDOW in flight; with `rate`, offered at that many messages per second."""
    sem = asyncio.Semaphore(WINDOW)
    start = time.perf_counter()

    async def one(topic: str, payload: bytes) -> None:
        try:
            await c.publish(topic, payload, qos=1)
        finally:
            sem.release()

    async with asyncio.TaskGroup() as tg:
        for i, (topic, payload) in enumerate(items):
            if rate is not None:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await sem.acquire()
            if stamps is not None:
                stamps.append(time.perf_counter())
            tg.create_task(one(topic, payload))


async def bare_publisher(port: int, n: int) -> None:
    """The limit: n QoS 1 publishes of event-sized payloads through aiomqtt alone, PUBACK awaited,
    the same window of publishes in flight as the gateway's outbox. Runs as its own process."""
    payload = b"x" * 560  # about the size of a ContactStatusEvent
    async with client(port, "bench-bare-pub") as pub:
        await publish_all(pub, [(f"bare/{i % 100}", payload) for i in range(n)])


async def bare_baseline(port: int, n: int) -> float:
    async with client(port, "bench-bare-sub") as sub:
        await sub.subscribe("bare/#", qos=1)
        got = 0
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.pipeline", "--bare-publisher", str(port), str(n), cwd=ROOT
        )
        async for _ in sub.messages:
            got += 1
            if got >= n:
                break
        rate = n / (time.perf_counter() - t0)
        await proc.wait()
        return rate


async def wait_online(c: aiomqtt.Client) -> None:
    """Wait for a gateway's retained presence to say `online` (subscribe to its status topic first)."""
    async for m in c.messages:
        if str(m.topic).endswith("/status") and json.loads(m.payload)["state"] == "online":  # type: ignore[arg-type]
            return


async def queue_in_draft(c: aiomqtt.Client, campaign: str, kind: str, commands: list[dict[str, Any]]) -> None:
    """Create `campaign` as a draft, queue `commands` in it and wait for their results; then start it.

    The phase measured afterwards is the channel's work only, not the command intake.
    """
    await c.subscribe("telgate/v1/evt/command", qos=1)
    create = {"command_id": f"{campaign}-create", "campaign_id": campaign, "action": "create"}
    await c.publish("telgate/v1/cmd/campaign", json.dumps(create).encode(), qos=1)
    for cmd in commands:
        await c.publish(f"telgate/v1/cmd/{kind}", json.dumps({"campaign_id": campaign, **cmd}).encode(), qos=1)
    results = 0
    async for m in c.messages:
        if str(m.topic).endswith("/evt/command"):
            results += 1
            if results >= len(commands) + 1:
                break
    await c.unsubscribe("telgate/v1/evt/command")
    start = {"command_id": f"{campaign}-start", "campaign_id": campaign, "action": "start"}
    await c.publish("telgate/v1/cmd/campaign", json.dumps(start).encode(), qos=1)


def start_gateway(
    cfg: Path, log: Path, rate: str = "100000", record: Path | None = None, scripted: bool = True
) -> subprocess.Popen[bytes]:
    """A gateway process from `cfg`; channels it has no configuration for are scripted (answer at once),
    each dial/send they carry out appended to `record` when given. `scripted=False`: the service itself
    (`python -m gateway run`), every channel as configured."""
    prefix = os.environ.get("BENCH_WRAP", "").split()
    args = ["-m", "tests.support.run_scripted", str(cfg), "0", rate, *([str(record)] if record else [])]
    return subprocess.Popen(
        [*prefix, sys.executable, *(args if scripted else ["-m", "gateway", "run", "--config", str(cfg)])],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def run_pipeline(
    port: int,
    contacts: int,
    workdir: Path,
    paced: float,
    store_url: str | None = None,
    cpu_of: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One gateway on `store_url` (None: SQLite in its data_dir); `cpu_of` names the other processes whose
    CPU is counted (name -> pid: the broker, the postmaster)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "telgate.toml"
    store = f'[store]\nurl = "{store_url}"\n' if store_url else ""
    cfg.write_text(
        f'[gateway]\nid = "gw-bench"\ndata_dir = "{workdir / "var"}"\n[bus]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\n[metrics]\ncampaign_label = false\n{store}'
    )
    proc = start_gateway(cfg, workdir / "gateway.log")
    others = cpu_of or {}
    try:
        async with client(port, "bench-backend") as c:
            await c.subscribe("telgate/v1/evt/contact/#", qos=1)
            await c.subscribe("telgate/v1/gateways/+/status", qos=1)
            await wait_online(c)

            async def phase(tag: str, n: int, rate: float | None) -> dict[str, float]:
                sent_at: list[float] = []
                first_event: dict[str, float] = {}
                events = finals = 0
                done = asyncio.Event()

                async def collect() -> None:
                    nonlocal events, finals
                    async for m in c.messages:
                        now = time.perf_counter()
                        e = json.loads(m.payload)  # type: ignore[arg-type]
                        events += 1
                        if e["sequence"] == 1:
                            first_event.setdefault(e["contact_id"], now)
                        if e["final"]:
                            finals += 1
                            if finals >= n:
                                done.set()
                                return

                cmds = [
                    (
                        "telgate/v1/cmd/dial",
                        json.dumps(
                            {
                                "command_id": f"{tag}{i}",
                                "campaign_id": tag,
                                "contact_id": f"{tag}{i}",
                                "phone": "+420601234560",
                            }
                        ).encode(),
                    )
                    for i in range(n)
                ]
                t0 = time.perf_counter()
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(collect())
                    await publish_all(c, cmds, sent_at, rate)
                    await asyncio.wait_for(done.wait(), 600)
                elapsed = time.perf_counter() - t0
                lat = sorted((first_event[f"{tag}{i}"] - sent_at[i]) * 1000 for i in range(n))
                return {
                    "events": events,
                    "seconds": elapsed,
                    "events_per_s": events / elapsed,
                    "p50_ms": statistics.median(lat),
                    "p99_ms": lat[int(len(lat) * 0.99) - 1],
                }

            cpu0 = {"gateway": cpu_s(proc.pid), **{k: tree_cpu_s(pid) for k, pid in others.items()}}
            burst = await phase("burst", contacts, None)
            cpu1 = {"gateway": cpu_s(proc.pid), **{k: tree_cpu_s(pid) for k, pid in others.items()}}
            steady = await phase("paced", max(1, int(paced * 5)), paced)
            per_1000 = {k: round((cpu1[k] - cpu0[k]) * 1000 / burst["events"], 3) for k in cpu0}
            return {**burst, "paced": steady, "rss_kib": rss_kib(proc.pid), "cpu_s_per_1000_events": per_1000}
    finally:
        proc.send_signal(signal.SIGINT if os.environ.get("BENCH_WRAP") else signal.SIGTERM)
        proc.wait(60)


async def run_queued(port: int, queued: int, workdir: Path) -> dict[str, int]:
    """Contacts waiting in a draft campaign: measured in the store, not in the process."""
    cfg = workdir / "queued.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-queue"\ndata_dir = "{workdir / "varq"}"\n[bus]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f'client_id = "telgate-queue"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
        "[metrics]\ncampaign_label = false\n"
    )
    proc = start_gateway(cfg, workdir / "queued.log")
    marks: dict[str, int] = {}
    try:
        async with client(port, "bench-queue") as c:
            await c.subscribe("telgate/v1/evt/command", qos=1)
            await c.subscribe("telgate/v1/gateways/gw-queue/status", qos=1)
            await wait_online(c)
            await c.publish(
                "telgate/v1/cmd/campaign",
                json.dumps({"command_id": "q-create", "campaign_id": "queued", "action": "create"}).encode(),
                qos=1,
            )
            results = 0
            step = queued // 10

            async def collect() -> None:
                nonlocal results
                async for _ in c.messages:
                    results += 1
                    if results % step == 1 and results // step in (1, 10):
                        pass
                    if results >= queued + 1:
                        return

            async with asyncio.TaskGroup() as tg:
                task = tg.create_task(collect())
                for start in range(0, queued, step):
                    await publish_all(
                        c,
                        [
                            (
                                "telgate/v1/cmd/dial",
                                json.dumps(
                                    {
                                        "command_id": f"q{i}",
                                        "campaign_id": "queued",
                                        "contact_id": f"q{i}",
                                        "phone": "+420601234560",
                                    }
                                ).encode(),
                            )
                            for i in range(start, start + step)
                        ],
                    )
                    while results < start + step:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    marks[f"rss_kib_after_{start + step}"] = rss_kib(proc.pid)
                await asyncio.wait_for(task, 300)
    finally:
        proc.terminate()
        proc.wait(60)
    return marks


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--paced", type=float, default=400.0, help="contacts/s offered in the latency phase")
    parser.add_argument("--stores", default="sqlite,postgres", help="which stores, in turn: sqlite,postgres")
    parser.add_argument("--rounds", type=int, default=1, help="the stores take turns this many times (medians)")
    parser.add_argument("--bare-publisher", nargs=2, type=int, metavar=("PORT", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_publisher:
        await bare_publisher(*args.bare_publisher)
        return
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in stores}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        pg = stack.enter_context(running_postgres(())) if "postgres" in stores else None
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        assert broker.proc is not None
        try:
            for r in range(args.rounds):
                for kind in stores:
                    cpu_of = {"broker": broker.proc.pid}
                    url = None
                    if kind == "postgres":
                        assert pg is not None
                        url = pg.create_database(f"bench{r}")
                        pid = pg.postmaster_pid()
                        if pid is not None:
                            cpu_of["postgres"] = pid
                    runs[kind].append(
                        await run_pipeline(broker.port, args.contacts, work / f"{kind}{r}", args.paced, url, cpu_of)
                    )
            events = runs[stores[0]][0]["events"]
            bare = await bare_baseline(broker.port, events)
            queued = await run_queued(broker.port, args.queued, work) if args.queued else {}
        finally:
            broker.stop()
    report: dict[str, Any] = {
        "contacts": args.contacts,
        "rounds": args.rounds,
        "bare_qos1_publishes_per_s": round(bare),
    }
    for kind, results in runs.items():
        rate = statistics.median(p["events_per_s"] for p in results)
        best = sorted(results, key=lambda p: p["events_per_s"])[len(results) // 2]
        report[kind] = {
            "status_events": best["events"],
            "events_per_s": round(rate),
            "events_per_s_each_round": [round(p["events_per_s"]) for p in results],
            "ratio_to_bare": round(rate / bare, 3),
            "burst_command_to_first_event_p50_ms": round(best["p50_ms"], 1),
            "burst_command_to_first_event_p99_ms": round(best["p99_ms"], 1),
            "paced_contacts_per_s": args.paced,
            "paced_events_per_s": round(best["paced"]["events_per_s"]),
            "paced_command_to_first_event_p50_ms": round(best["paced"]["p50_ms"], 1),
            "paced_command_to_first_event_p99_ms": round(best["paced"]["p99_ms"], 1),
            "cpu_s_per_1000_events": best["cpu_s_per_1000_events"],
            "gateway_rss_kib_after_pipeline": best["rss_kib"],
        }
    if "sqlite" in runs and "postgres" in runs:
        report["postgres_to_sqlite"] = round(report["postgres"]["events_per_s"] / report["sqlite"]["events_per_s"], 3)
    report.update(queued)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
