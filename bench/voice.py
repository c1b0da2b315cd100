"""Voice benchmark: telgate dialling a SIPp UAS on loopback, beside SIPp's own UAC and pyVoIP 1.6.

    python -m bench.voice [--calls 2000] [--rates 100,300,600] [--ringing 5000] [--pyvoip 200]

- Outcome mix at rising rates: a gateway process (max_cps = rate) dials `--calls` contacts queued in a
  draft campaign that is then started. The SIPp UAS (tests/sipp/mix.xml) answers by the number's last
  digit: 0-5 answered and hung up by the callee after 1 s, 6-7 486, 8-9 480. Every contact's final
  status is checked against its digit (success / completed_without_answer with the right sip_code):
  "wrong_or_lost" counts the others. Reported: sustained attempts/s (start → last final), the most
  calls up at once, and at the first rate, with SIPp's message log on, the delay from SIPp writing its
  final response (or 200 OK) to the matching event arriving on the broker: p50 / p99.
- Held calls: `--ringing` calls left ringing (tests/sipp/ring_forever.xml, ring timeout 10 min); the
  gateway's RSS with all of them ringing minus its RSS with the same contacts queued → KiB per call;
  then one `cancel` for the campaign CANCELs them all (each must end canceled_by_admin).
- Transports (`--transports udp,tls`): the same mix at `--transport-rate` and `--transport-ringing` held
  calls, once per transport, with Kamailio (bench/kamailio_front.cfg) in front of the SIPp UAS — the
  Debian SIPp has no TLS — so that only the leg telgate → proxy differs; reported with TLS / UDP ratios.
- The limit: SIPp's built-in UAC against the same UAS, unthrottled. The design card's peer: pyVoIP 1.6
  placing `--pyvoip` calls one after another, then 5 x as many from 20 threads (its API is a thread per
  call), against a SIPp UAS that registers it, rings and answers at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt

from bench.pipeline import client, queue_in_draft, rss_kib, start_gateway, wait_online
from tests.support.broker import Mosquitto, free_port
from tests.support.certs import Pki
from tests.support.pbx import Kamailio, KamailioTls
from tests.support.sipp import SCENARIOS, free_udp_port

ROOT = Path(__file__).resolve().parents[1]
BENCH_SCENARIOS = Path(__file__).resolve().parent / "sipp"
HOLD_MS = 1000
FRONT = Path(__file__).resolve().parent / "kamailio_front.cfg"


@contextlib.contextmanager
def pbx_path(sipp_port: int, workdir: Path, transport: str | None) -> Iterator[tuple[str, str]]:
    """Where the gateway dials and its extra [sip] lines: the SIPp UAS itself (`transport` None), or
    Kamailio in front of it, reached over UDP or TLS (a throwaway CA; the gateway verifies as always)."""
    if transport is None:
        yield f"127.0.0.1:{sipp_port}", ""
        return
    pki = Pki(workdir / "pki")
    tls = KamailioTls(pki.issue("pbx"), pki.ca)
    fill = {"SIPP_PORT": str(sipp_port)}
    with Kamailio(workdir / "kamailio", tls=tls, config=FRONT, fill=fill, memory_mb=512) as kam:
        if transport == "tls":
            yield kam.tls_address, f'transport = "tls"\nca_file = "{pki.ca}"\n'
        else:
            yield kam.address, ""


def sipp_uas(scenario: Path, port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """A SIPp UAS that runs until it is stopped. No `-m`: SIPp counts a late INVITE retransmission of a
    call it has already finished as one more call, so with `-m N` it stops before the last calls of a
    loaded run arrive, which looked like lost calls (Timer B) and a call never hung up."""
    return subprocess.Popen(
        [
            "sipp",
            "-sf",
            str(scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(port),
            "-nostdin",
            "-timeout",
            "900",
            "-max_socket",
            "10000",
            "-l",
            "20000",  # SIPp's UAS ignores INVITEs over its open-call limit (default 3 x rate x duration)
            *extra,
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def expected(contact: str) -> tuple[str, int | None]:
    digit = int(contact[-1])
    if digit <= 5:
        return "success", None
    return "completed_without_answer", 486 if digit <= 7 else 480


def sipp_sent_times(workdir: Path) -> dict[str, float]:
    """Call-ID → when SIPp sent its final response or 200 OK to the INVITE (from its -trace_msg log)."""
    out: dict[str, float] = {}
    for path in workdir.glob("mix_*_messages.log"):
        for chunk in re.split(r"^-{20,} ", path.read_text(errors="replace"), flags=re.MULTILINE):
            head, _, rest = chunk.partition("\n")
            if "message sent" not in rest[:80] or not re.search(r"\nSIP/2\.0 (200|486|480) ", rest):
                continue
            if not re.search(r"\nCSeq: *\d+ INVITE", rest):
                continue
            call_id = re.search(r"\nCall-ID: *(\S+)", rest)
            if call_id:
                out.setdefault(call_id.group(1), datetime.fromisoformat(head.strip()).timestamp())
    return out


def _config(
    workdir: Path, name: str, broker: Mosquitto, pbx: str, rate: int, ring_timeout: int = 60, sip_extra: str = ""
) -> Path:
    cfg = workdir / f"{name}.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-{name}"\ndata_dir = "{workdir / f"var-{name}"}"\n[bus]\nurl = "{broker.url}"\n'
        f'client_id = "telgate-{name}"\nshared_group = "{name}"\n[http]\nlisten = "127.0.0.1:{free_port()}"\n'
        f"[metrics]\ncampaign_label = false\n[retry]\nmax_attempts = 1\n"
        f'[sip]\npbx = "{pbx}"\nlocal = "127.0.0.1:0"\nmax_cps = {rate}\nmax_concurrent_calls = 20000\n'
        f"ring_timeout_s = {ring_timeout}\noptions_interval_s = 3600\n{sip_extra}"
    )
    return cfg


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def warm_up(c: aiomqtt.Client, campaign: str, n: int) -> None:
    """Dial `n` calls of the same mix in a campaign of their own and wait for them to end."""
    for i in range(n):
        dial = {
            "command_id": f"{campaign}-{i}",
            "campaign_id": campaign,
            "contact_id": f"w{i}",
            "phone": f"+420609{i:06d}",
        }
        await c.publish("telgate/v1/cmd/dial", json.dumps(dial).encode(), qos=1)
    finals: set[str] = set()
    async with asyncio.timeout(120):
        async for m in c.messages:
            if str(m.topic).startswith(f"telgate/v1/evt/contact/voice/{campaign}/"):
                e = json.loads(m.payload)  # type: ignore[arg-type]
                if e["final"]:
                    finals.add(e["contact_id"])
                    if len(finals) >= n:
                        return


async def run_mix(
    broker: Mosquitto, rate: int, calls: int, workdir: Path, trace: bool, via: str | None = None
) -> dict[str, Any]:
    port = free_udp_port()
    tag = f"{rate}" if via is None else f"{rate}-{via}"
    sipp_dir = workdir / f"sipp-{tag}"
    sipp_dir.mkdir()
    extra = ("-d", str(HOLD_MS), "-trace_err", *(("-trace_msg",) if trace else ()))
    uas = sipp_uas(SCENARIOS / "mix.xml", port, sipp_dir, *extra)
    name = f"voice-{tag}"
    stack = contextlib.ExitStack()  # the Kamailio front, if any: stopped after the gateway
    pbx, sip_extra = stack.enter_context(pbx_path(port, workdir / f"front-{tag}", via))
    gw = start_gateway(
        _config(workdir, name, broker, pbx, rate, sip_extra=sip_extra), workdir / f"{name}.log", rate="1000"
    )
    try:
        async with client(broker.port, f"bench-{name}") as c:
            await c.subscribe("telgate/v1/evt/#", qos=1)
            await c.subscribe(f"telgate/v1/gateways/gw-{name}/status", qos=1)
            await wait_online(c)
            await warm_up(c, f"warm{tag}", 50)  # the first calls of a fresh process are not the steady state
            camp = f"mix{tag}"
            await queue_in_draft(
                c,
                camp,
                "dial",
                [
                    {"command_id": f"{camp}-{i}", "contact_id": f"k{i:06d}", "phone": f"+420601{i:06d}"}
                    for i in range(calls)
                ],
            )
            start = time.perf_counter()
            finals: dict[str, dict[str, Any]] = {}
            arrived: dict[str, float] = {}  # call_id → when its answer/final event arrived
            up = peak_up = 0
            peak_rss = 0
            deadline = time.perf_counter() + calls / rate * 3 + 60  # a run that stalls is reported, not waited on
            messages = aiter(c.messages)
            while time.perf_counter() < deadline:
                try:
                    m = await asyncio.wait_for(anext(messages), timeout=max(0.1, deadline - time.perf_counter()))
                except TimeoutError:
                    break
                if not str(m.topic).startswith("telgate/v1/evt/contact/"):
                    continue
                e = json.loads(m.payload)  # type: ignore[arg-type]
                if e["campaign_id"] != camp:
                    continue
                now = time.time()
                call_id = (e.get("signal") or {}).get("call_id")
                if e["status"] == "calling":
                    up += 1
                    peak_up = max(peak_up, up)
                elif e["status"] in ("call_in_progress", "completed_without_answer") and call_id:
                    arrived.setdefault(call_id, now)
                if e["final"]:
                    up -= 1
                    finals[e["contact_id"]] = e
                    if len(finals) % 200 == 0:
                        peak_rss = max(peak_rss, rss_kib(gw.pid))
                    if len(finals) >= calls:
                        break
            elapsed = time.perf_counter() - start
            wrong = [
                k
                for k, e in finals.items()
                if (e["status"], e["signal"].get("sip_code") if e["status"] != "success" else None) != expected(k)
            ]
            result: dict[str, Any] = {
                "rate_asked": rate,
                "attempts_per_s": round(calls / elapsed, 1),
                "calls": calls,
                "outcomes": {
                    s: sum(1 for e in finals.values() if e["status"] == s)
                    for s in ("success", "completed_without_answer")
                },
                "wrong_or_lost": len(wrong) + calls - len(finals),
                "most_calls_up": peak_up,
                "gateway_rss_kib": max(peak_rss, rss_kib(gw.pid)),
            }
            if trace:
                await asyncio.sleep(0.5)
                uas.send_signal(signal.SIGINT)  # SIPp quits and flushes its message log
                await asyncio.to_thread(uas.wait, 30)
                sent = sipp_sent_times(sipp_dir)
                delays = [(arrived[cid] - t) * 1000 for cid, t in sent.items() if cid in arrived]
                result["sip_final_to_event_ms"] = {
                    "n": len(delays),
                    "p50": round(statistics.median(delays), 2) if delays else None,
                    "p99": round(_percentile(delays, 0.99), 2),
                    "max": round(max(delays), 2) if delays else None,
                }
                t0 = min(sent.values()) if sent else 0.0
                slow = sorted(
                    (round(t - t0, 2), round((arrived[c] - t) * 1000)) for c, t in sent.items() if c in arrived
                )
                result["slowest_at_s"] = [pair for pair in slow if pair[1] > 50][:40]
            return result
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(60)
        stack.close()
        if uas.poll() is None:
            uas.kill()
        uas.wait()


async def run_ringing(broker: Mosquitto, n: int, workdir: Path, via: str | None = None) -> dict[str, Any]:
    port = free_udp_port()
    name = "ringing" if via is None else f"ringing-{via}"
    sipp_dir = workdir / f"sipp-{name}"
    sipp_dir.mkdir()
    uas = sipp_uas(SCENARIOS / "ring_forever.xml", port, sipp_dir)
    stack = contextlib.ExitStack()
    pbx, sip_extra = stack.enter_context(pbx_path(port, workdir / f"front-{name}", via))
    cfg = _config(workdir, name, broker, pbx, 500, ring_timeout=600, sip_extra=sip_extra)
    gw = start_gateway(cfg, workdir / f"{name}.log")
    try:
        async with client(broker.port, f"bench-{name}") as c:
            await c.subscribe("telgate/v1/evt/#", qos=1)
            await c.subscribe(f"telgate/v1/gateways/gw-{name}/status", qos=1)
            await wait_online(c)
            camp = name
            contacts = [
                {"command_id": f"r-{i}", "contact_id": f"r{i:06d}", "phone": f"+420602{i:06d}"} for i in range(n)
            ]
            await queue_in_draft(c, camp, "dial", contacts)
            await asyncio.sleep(2.0)
            queued_rss = rss_kib(gw.pid)
            calling = 0
            start = time.perf_counter()
            async for m in c.messages:
                if str(m.topic).startswith("telgate/v1/evt/contact/") and json.loads(m.payload)["status"] == "calling":  # type: ignore[arg-type]
                    calling += 1
                    if calling >= n:
                        break
            await asyncio.sleep(3.0)  # every INVITE has had its 180
            ringing_rss = rss_kib(gw.pid)
            up_after = time.perf_counter() - start
            payload = {"command_id": "cancel-all", "campaign_id": camp}
            await c.publish("telgate/v1/cmd/cancel", json.dumps(payload), qos=1)
            canceled = 0
            async for m in c.messages:
                if str(m.topic).startswith("telgate/v1/evt/contact/"):
                    e = json.loads(m.payload)  # type: ignore[arg-type]
                    if e["final"]:
                        canceled += e["status"] == "canceled_by_admin"
                        if canceled >= n:
                            break
            return {
                "ringing_calls": n,
                "all_ringing_after_s": round(up_after, 1),
                "rss_queued_kib": queued_rss,
                "rss_ringing_kib": ringing_rss,
                "kib_per_ringing_call": round((ringing_rss - queued_rss) / n, 2),
                "canceled_by_admin": canceled,
            }
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(120)
        stack.close()
        uas.kill()
        uas.wait()


async def run_transports(
    broker: Mosquitto, transports: list[str], rate: int, calls: int, ringing: int, workdir: Path
) -> dict[str, Any]:
    """The mix and the held calls once per transport through the same Kamailio front, side by side."""
    out: dict[str, Any] = {"peer": "Kamailio 5.6 (tls module) in front of the SIPp UAS", "rate_asked": rate}
    for t in transports:
        out[t] = {"mix": await run_mix(broker, rate, calls, workdir, trace=False, via=t)}
    if ringing:
        for t in transports:
            out[t]["ringing"] = await run_ringing(broker, ringing, workdir, via=t)
    if "udp" in transports and "tls" in transports:
        udp, tls = out["udp"], out["tls"]
        ratios = {"attempts_per_s": round(tls["mix"]["attempts_per_s"] / udp["mix"]["attempts_per_s"], 3)}
        if ringing and udp["ringing"]["kib_per_ringing_call"] > 0:
            ratios["kib_per_ringing_call"] = round(
                tls["ringing"]["kib_per_ringing_call"] / udp["ringing"]["kib_per_ringing_call"], 3
            )
        out["tls_over_udp"] = ratios
    return out


def sipp_limit(calls: int, workdir: Path) -> float:
    port = free_udp_port()
    sipp_dir = workdir / "sipp-limit"
    sipp_dir.mkdir()
    uas = sipp_uas(SCENARIOS / "busy_486.xml", port, sipp_dir)
    time.sleep(0.3)
    start = time.perf_counter()
    subprocess.run(
        [
            "sipp",
            "-sf",
            str(BENCH_SCENARIOS / "uac_busy.xml"),
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
        cwd=sipp_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    elapsed = time.perf_counter() - start
    uas.kill()
    uas.wait()
    return calls / elapsed


PYVOIP_SCRIPT = r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
from pyVoIP.VoIP import VoIPPhone, CallState
server, port, calls, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
phone = VoIPPhone(server, port, "bench", "bench", myIP="127.0.0.1", sipPort=int(sys.argv[4]))
phone.start()

def one(i):
    try:
        call = phone.call(f"420603{i:06d}")
    except Exception:
        return False
    deadline = time.perf_counter() + 10
    while call.state != CallState.ANSWERED and time.perf_counter() < deadline:
        time.sleep(0.001)
    ok = call.state == CallState.ANSWERED
    try:
        call.hangup()
    except Exception:
        pass
    return ok

start = time.perf_counter()
with ThreadPoolExecutor(threads) as pool:
    answered = sum(pool.map(one, range(calls)))
elapsed = time.perf_counter() - start
phone.stop()
print(f"{answered} {elapsed}")
"""


def pyvoip_rate(calls: int, workdir: Path, threads: int) -> dict[str, Any]:
    """pyVoIP 1.6 (if installed: pip install pyVoIP==1.6.8) against a UAS that registers and answers."""
    try:
        import pyVoIP  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return {"skipped": "pyVoIP is not installed (pip install pyVoIP==1.6.8)"}
    port = free_udp_port()
    sipp_dir = workdir / f"sipp-pyvoip-{threads}"
    sipp_dir.mkdir()
    uas = sipp_uas(BENCH_SCENARIOS / "register_then_answer.xml", port, sipp_dir)
    time.sleep(0.3)

    try:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                PYVOIP_SCRIPT,
                "127.0.0.1",
                str(port),
                str(calls),
                str(free_udp_port()),
                str(threads),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        fields = out.stdout.split()
        if out.returncode != 0 or len(fields) != 2:
            return {"failed": (out.stderr or out.stdout)[-500:]}
        answered, elapsed = int(fields[0]), float(fields[1])
        return {"calls": calls, "threads": threads, "answered": answered, "calls_per_s": round(calls / elapsed, 2)}
    finally:
        uas.kill()
        uas.wait()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rates", default="100,300,600")
    parser.add_argument("--ringing", type=int, default=5000)
    parser.add_argument("--pyvoip", type=int, default=20)
    parser.add_argument("--transports", default="", help="e.g. udp,tls: the mix and held calls through Kamailio")
    parser.add_argument("--transport-rate", type=int, default=300)
    parser.add_argument("--transport-calls", type=int, default=2000)
    parser.add_argument("--transport-ringing", type=int, default=2000)
    args = parser.parse_args()
    report: dict[str, Any] = {"mix": [], "hold_ms": HOLD_MS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        try:
            for i, rate in enumerate(int(r) for r in args.rates.split(",") if r):
                report["mix"].append(await run_mix(broker, rate, args.calls, work, trace=i == 0))
            if args.ringing:
                report["ringing"] = await run_ringing(broker, args.ringing, work)
            if args.transports:
                report["transports"] = await run_transports(
                    broker,
                    args.transports.split(","),
                    args.transport_rate,
                    args.transport_calls,
                    args.transport_ringing,
                    work,
                )
            report["sipp_uac_limit_calls_per_s"] = round(sipp_limit(args.calls, work), 1)
            if args.pyvoip:
                report["pyvoip"] = [pyvoip_rate(args.pyvoip, work, 1), pyvoip_rate(args.pyvoip * 5, work, 20)]
        finally:
            broker.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
