"""Several instances on one PostgreSQL and one Mosquitto (SPEC §11): 1, 2 and 3 instances side by side.

    python -m bench.scale [--instances 1,2,3] [--contacts 3000] [--calls 1500] [--rounds 2]
                          [--takeover-leases 2,10] [--json bench_scale.json]

Every round runs each cluster size in turn (rounds interleaved, as bench/pipeline.py takes turns between
its stores), so the machine's other load falls on all sizes alike; each cluster gets a database of its
own on one private PostgreSQL on its defaults (fsync on), one Mosquitto with the shipped limits, and
members started as processes as tests/integration/test_cluster.py starts them (own gateway.id, bus
client_id, shared group per cluster, lease_s):

- events: scripted channels (tests/support/run_scripted.py, every call answered at once, 4 events per
  contact); a burst of `--contacts` dial commands from a backend → the status events received on the
  broker; command → first event p50/p99 for the burst and for `--paced` contacts/s offered;
- dials: `python -m gateway run` against a SIPp UAS (tests/sipp/mix.xml: 60 % answered and held
  `--hold-ms`, 20 % 486, 20 % 480), `--calls` contacts queued in a draft campaign then started;
  `sip.max_cps` is set far above what is reached so it is not the limit (the report says so);
- CPU seconds per 1,000 events by process from /proc: each instance, PostgreSQL (postmaster and
  backends), the broker, SIPp, this backend, and what the rest of the machine used meanwhile;
- takeover: three instances dialling SIPp, one SIGKILLed while it has calls up; from the kill to the
  first `gateway_restart` event decided by a survivor, and to the last contact final, per lease_s.

Every run is also checked: per contact, sequences without a gap and a repeat only with the same
event_id; the store's sequences against the events received (lost); each dial carried out once per
attempt (the scripted ports' record, SIPp's message log in the takeover); what the instances logged at
warning and above, and their compare-and-set conflicts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg

from bench.pipeline import CLK_TCK, client, cpu_s, publish_all, start_gateway, tree_cpu_s
from bench.voice import expected, sipp_uas, warm_up
from gateway.store import PARTS
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import backend
from tests.support.postgres import Postgres, running_postgres
from tests.support.sipp import SCENARIOS, Sipp, free_udp_port

MAX_CPS = 3000  # for the cluster (each member max_cps / members): far above the dial rates reached here
Key = tuple[str, str]
RACE = os.environ.get("BENCH_SCALE_RACE") == "1"  # queue the draft as bench.pipeline does: dials right after create


# -- measuring -------------------------------------------------------------------------------------------


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores: /proc/stat less idle and iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


@dataclass
class Meter:
    """CPU seconds of named processes (`trees`: with their live children) and of the machine."""

    pids: dict[str, int]
    trees: dict[str, int] = field(default_factory=dict)

    def sample(self) -> dict[str, float]:
        out = {k: cpu_s(p) for k, p in self.pids.items()} | {k: tree_cpu_s(p) for k, p in self.trees.items()}
        out["backend (bench)"] = cpu_s(os.getpid())
        out["machine"] = machine_busy_s()
        return out

    @staticmethod
    def split(before: dict[str, float], after: dict[str, float], events: int, wall_s: float) -> dict[str, Any]:
        used = {k: after[k] - before[k] for k in before}
        machine = used.pop("machine")
        ours = sum(used.values())
        per = {k: round(v * 1000 / max(1, events), 3) for k, v in used.items()}
        per["all of these"] = round(ours * 1000 / max(1, events), 3)
        gws = [v for k, v in used.items() if k.startswith("gw")]
        return {
            "cpu_s_per_1000_events": per,
            "gateways_cpu_s_per_1000_events": round(sum(gws) * 1000 / max(1, events), 3),
            "cores_busy": {k: round(v / wall_s, 2) for k, v in used.items()} | {"machine": round(machine / wall_s, 2)},
            "other_load_cores": round(max(0.0, machine - ours) / wall_s, 2),
        }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@dataclass
class Stream:
    """The contact events of one cluster run as a backend keeps them, with when each contact's first one came."""

    by_contact: dict[Key, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    first_at: dict[Key, float] = field(default_factory=dict)
    finals: set[Key] = field(default_factory=set)
    received: int = 0
    last_calling_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def take(self, m: aiomqtt.Message) -> dict[str, Any] | None:
        if not str(m.topic).startswith("telgate/v1/evt/contact/"):
            return None
        e: dict[str, Any] = json.loads(m.payload)  # type: ignore[arg-type,unused-ignore]
        key = (e["campaign_id"], e["contact_id"])
        self.received += 1
        self.by_contact[key].append(e)
        now = time.perf_counter()
        self.first_at.setdefault(key, now)
        if e["status"] == "calling":
            self.last_calling_at = now
        if e["final"]:
            self.finals.add(key)
        self.changed.set()
        return e

    def unique(self) -> int:
        return sum(len({e["event_id"] for e in evs}) for evs in self.by_contact.values())

    def check(self, first_sequence: int = 1) -> dict[str, Any]:
        """Gaps, repeats, one sequence with two event ids (decided twice), order of arrival."""
        repeats = twice = gaps = out_of_order = 0
        examples: list[str] = []
        for key, evs in self.by_contact.items():
            ids: dict[int, str] = {}
            firsts: list[int] = []
            for e in evs:
                seen = ids.get(e["sequence"])
                if seen is None:
                    ids[e["sequence"]] = e["event_id"]
                    firsts.append(e["sequence"])
                elif seen == e["event_id"]:
                    repeats += 1
                else:
                    twice += 1
                    examples.append(f"{key}: sequence {e['sequence']} with two event ids")
            start = min(ids) if ids and min(ids) in (1, first_sequence) else first_sequence
            if sorted(ids) != list(range(start, start + len(ids))):
                gaps += 1
                examples.append(f"{key}: sequences {sorted(ids)}")
            if firsts != sorted(firsts):
                out_of_order += 1
                examples.append(f"{key}: arrived in the order {firsts}")
        return {
            "repeats_same_event_id": repeats,
            "sequence_decided_twice": twice,
            "contacts_with_gaps": gaps,
            "contacts_out_of_order": out_of_order,
            "examples": examples[:5],
        }

    async def wait(self, predicate: Callable[[], bool], within_s: float) -> bool:
        deadline = time.perf_counter() + within_s
        while not predicate():
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.1))
        return True


async def pump(c: aiomqtt.Client, stream: Stream) -> None:
    async for m in c.messages:
        stream.take(m)


LOG_NOISE = re.compile(r"\d+")


def log_findings(logs: list[Path]) -> dict[str, Any]:
    """What the instances logged at warning and above (by message, numbers folded), and their conflicts."""
    levels: Counter[str] = Counter()
    conflicts = 0
    took_over: list[dict[str, Any]] = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                if line.strip():
                    levels[f"{path.stem}: (not JSON) {LOG_NOISE.sub('N', line.strip())[:160]}"] += 1
                continue
            msg = str(rec.get("msg", ""))
            if "compare-and-set conflict" in msg:
                conflicts += 1
            if msg.startswith("took over"):
                took_over.append({"by": path.stem, "member": rec.get("member"), "contacts": rec.get("contacts")})
            if rec.get("level") in ("warning", "error", "critical"):
                detail = LOG_NOISE.sub("N", str(rec.get("detail", rec.get("exc", ""))))[:160]
                levels[f"{path.stem}: {rec['level']}: {msg}{' — ' + detail if detail else ''}"] += 1
    return {"warnings_and_errors": dict(levels.most_common(12)), "cas_conflicts": conflicts, "took_over": took_over}


def store_check(url: str, campaigns: list[str]) -> dict[str, int]:
    """The store's side: events it decided for these campaigns (the contacts' sequences), and what is left
    unpublished in the outbox."""
    with psycopg.connect(url, autocommit=True) as conn:
        decided = conn.execute(
            "SELECT coalesce(sum(sequence), 0), count(*) FROM contacts WHERE campaign_id = ANY(%s)", (campaigns,)
        ).fetchone()
        pending = conn.execute("SELECT count(*) FROM messages WHERE pending").fetchone()
    assert decided is not None and pending is not None
    return {"events_decided": int(decided[0]), "contacts": int(decided[1]), "outbox_left_pending": int(pending[0])}


def store_diag(url: str, stream: Stream, campaign: str) -> dict[str, Any]:
    """When events did not arrive: what the store holds for them while the cluster still runs."""
    with psycopg.connect(url, autocommit=True) as conn:
        pending = conn.execute(
            "SELECT m.part, p.owner, p.expires_at > now(), count(*), extract(epoch FROM now() - min(m.created_at))"
            " FROM messages m JOIN partitions p ON p.part = m.part WHERE m.pending GROUP BY 1, 2, 3 ORDER BY 1"
        ).fetchall()
        statuses = conn.execute(
            "SELECT status, count(*) FROM contacts WHERE campaign_id = %s GROUP BY 1", (campaign,)
        ).fetchall()
        members = conn.execute("SELECT gateway_id, expires_at > now() FROM members").fetchall()
        missing = [k for k in stream.by_contact if k not in stream.finals][:3]
        rows = []
        for key in missing:
            for r in conn.execute(
                "SELECT id, part, pending, created_at, convert_from(payload, 'UTF8')::jsonb ->> 'status',"
                " convert_from(payload, 'UTF8')::jsonb ->> 'gateway_id' FROM messages"
                " WHERE campaign_id = %s AND contact_id = %s ORDER BY id",
                key,
            ):
                rows.append([str(x) for x in r])
    return {
        "pending_by_partition": [[str(x) for x in r] for r in pending][:20],
        "pending_total": sum(int(r[3]) for r in pending),
        "contact_statuses": dict((str(r[0]), int(r[1])) for r in statuses),
        "members": [[str(x) for x in r] for r in members],
        "events_of_unfinished_contacts": rows,
    }


# -- a cluster ----------------------------------------------------------------------------------------------


@dataclass
class Env:
    broker: Mosquitto
    pg: Postgres
    work: Path
    lease_s: float


@dataclass
class Cluster:
    url: str
    procs: dict[str, subprocess.Popen[bytes]]
    logs: list[Path]
    records: list[Path]


def config(env: Env, dirs: Path, tag: str, i: int, url: str, lease_s: float, sip: str) -> Path:
    name = f"{tag}g{i}"
    cfg = dirs / f"{name}.toml"
    cfg.write_text(
        f'[gateway]\nid = "{name}"\ndata_dir = "{dirs / name}"\nlease_s = {lease_s}\ndrain_timeout_s = 5\n'
        f'[store]\nurl = "{url}"\n'
        # a shared group of the cluster's own: a stopped cluster's last session keeps its share of the
        # group, and would take commands meant for the next one
        f'[bus]\nurl = "{env.broker.url}"\nclient_id = "telgate-{name}"\nshared_group = "{tag}"\n'
        f'[http]\nlisten = "127.0.0.1:0"\n[metrics]\ncampaign_label = false\n{sip}'
    )
    return cfg


async def settled(url: str, n: int, within_s: float) -> None:
    """Every member has joined and holds its share of the outbox partitions (the store says so)."""
    deadline = time.monotonic() + within_s
    fair = math.ceil(PARTS / n)
    while True:
        members = owners = None
        with psycopg.connect(url, autocommit=True) as conn, contextlib.suppress(psycopg.errors.UndefinedTable):
            members = conn.execute("SELECT count(*) FROM members WHERE expires_at > now()").fetchone()
            owners = conn.execute(
                "SELECT count(DISTINCT owner), count(*) FILTER (WHERE owner IS NULL OR expires_at <= now()),"
                " max(n) FROM (SELECT owner, expires_at, count(*) OVER (PARTITION BY owner) AS n FROM partitions) p"
            ).fetchone()
        if members and owners and members[0] == n and owners[0] == n and owners[1] == 0 and owners[2] <= fair:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cluster of {n} did not settle: members {members}, partitions {owners}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def cluster(
    env: Env, tag: str, n: int, sip: str = "", scripted: bool = True, lease_s: float | None = None
) -> AsyncIterator[Cluster]:
    lease = lease_s or env.lease_s
    dirs = env.work / tag
    dirs.mkdir(parents=True)
    url = await asyncio.to_thread(env.pg.create_database, tag)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = [dirs / f"gw{i}.log" for i in range(1, n + 1)]
    records = [dirs / f"gw{i}.dials" for i in range(1, n + 1)]
    try:
        for i in range(1, n + 1):
            cfg = config(env, dirs, tag, i, url, lease, sip)
            procs[f"gw{i}"] = start_gateway(
                cfg, logs[i - 1], record=records[i - 1] if scripted else None, scripted=scripted
            )
            if i == 1:  # the first applies the migrations; the others join a migrated store
                await settled(url, 1, 30)
        await settled(url, n, 30 + 4 * lease)
        async with client(env.broker.port, f"bench-{tag}-presence") as c:
            await c.subscribe("telgate/v1/gateways/+/status", qos=1)
            online: set[str] = set()
            async with asyncio.timeout(30):
                async for m in c.messages:
                    gid = str(m.topic).split("/")[-2]
                    if gid.startswith(tag) and json.loads(m.payload)["state"] == "online":  # type: ignore[arg-type,unused-ignore]
                        online.add(gid)
                    if len(online) == n:
                        break
        await asyncio.sleep(lease / 3 + 0.1)  # each has renewed with the others in sight (its share of the rates)
        yield Cluster(url, procs, logs, records)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                await asyncio.to_thread(p.wait, 30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                with logs[int(name[2:]) - 1].open("a") as out:
                    out.write('{"level": "error", "msg": "bench: no exit within 30 s of SIGTERM"}\n')


def exits(c: Cluster) -> dict[str, int | None]:
    return {k: p.returncode for k, p in c.procs.items()}


# -- the phases ---------------------------------------------------------------------------------------------


def dial(tag: str, i: int, phone: str = "+420601234560") -> tuple[str, bytes]:
    body = {"command_id": f"{tag}-{i}", "campaign_id": tag, "contact_id": f"c{i}", "phone": phone}
    return "telgate/v1/cmd/dial", json.dumps(body).encode()


async def run_events(env: Env, tag: str, n: int, contacts: int, paced: float) -> dict[str, Any]:
    async with cluster(env, tag, n) as cl, client(env.broker.port, f"bench-{tag}") as c:
        await c.subscribe(f"telgate/v1/evt/contact/voice/{tag}b/#", qos=1)
        await c.subscribe(f"telgate/v1/evt/contact/voice/{tag}p/#", qos=1)
        stream = Stream()
        meter = Meter(
            {k: p.pid for k, p in cl.procs.items()} | {"broker": env.broker.proc.pid},  # type: ignore[union-attr]
            {"postgres": env.pg.postmaster_pid() or 0},
        )
        result: dict[str, Any] = {"instances": n}
        async with asyncio.TaskGroup() as tg:
            reader = tg.create_task(pump(c, stream))
            for phase, count, rate in (("b", contacts, None), ("p", max(1, int(paced * 4)), paced)):
                camp = f"{tag}{phase}"
                sent_at: list[float] = []
                cmds = [dial(camp, i) for i in range(count)]
                cpu0, t0 = meter.sample(), time.perf_counter()
                await publish_all(c, cmds, sent_at, rate)

                def all_final(camp: str = camp, count: int = count) -> bool:
                    return sum(1 for k in stream.finals if k[0] == camp) >= count

                done = await stream.wait(all_final, 120)
                wall = time.perf_counter() - t0
                cpu1 = meter.sample()
                events = sum(len({e["event_id"] for e in v}) for k, v in stream.by_contact.items() if k[0] == camp)
                lat = [
                    (stream.first_at[(camp, f"c{i}")] - sent_at[i]) * 1000
                    for i in range(count)
                    if (camp, f"c{i}") in stream.first_at
                ]
                entry = {
                    "contacts": count,
                    "all_final": done,
                    "events": events,
                    "seconds": round(wall, 2),
                    "events_per_s": round(events / wall, 1),
                    "command_to_first_event_p50_ms": round(statistics.median(lat), 1) if lat else None,
                    "command_to_first_event_p99_ms": round(pct(lat, 0.99), 1),
                }
                if phase == "b":
                    entry |= Meter.split(cpu0, cpu1, events, wall)
                    result["burst"] = entry
                else:
                    entry["offered_contacts_per_s"] = paced
                    result["paced"] = entry
            await asyncio.sleep(0.3)  # late repeats, if any
            reader.cancel()
        wire: Counter[Any] = Counter()
        for path in cl.records:
            if path.exists():
                for line in path.read_text().splitlines():
                    camp, contact, _attempt = line.split()
                    wire[(camp, contact)] += 1
    result["check"] = stream.check()
    cmp = ledger.compare(stream, "voice", wire, by="contact")
    result["check"]["dials_carried_out"] = cmp.wire
    result["check"]["attempts_in_events"] = cmp.attempts
    result["check"]["ledger_mismatches"] = cmp.mismatches[:5]
    dials_by = [len(p.read_text().splitlines()) if p.exists() else 0 for p in cl.records]
    result["check"]["dials_by_instance"] = dials_by
    result["check"]["store"] = store_check(cl.url, [f"{tag}b", f"{tag}p"])
    result["check"]["lost"] = result["check"]["store"]["events_decided"] - stream.unique()
    result["check"]["exit_codes"] = exits(cl)
    result["logs"] = log_findings(cl.logs)
    return result


async def queue_draft(
    c: aiomqtt.Client, campaign: str, contacts: list[dict[str, Any]], wait_create: bool = True
) -> dict[str, Any]:
    """bench.pipeline.queue_in_draft, with what it leaves unsaid: the `create`'s result, and the contacts
    that left `initial` before the `start` (a campaign that was no draft). With `wait_create`, the dials go
    only once the draft exists: over several instances the shared subscription spreads one publisher's
    commands over them, so a dial taken by one instance can be decided before the `create` another took,
    and creates the campaign `in_progress` (the create then fails with campaign_exists)."""
    await c.subscribe("telgate/v1/evt/command", qos=1)
    create = {"command_id": f"{campaign}-create", "campaign_id": campaign, "action": "create"}
    await c.publish("telgate/v1/cmd/campaign", json.dumps(create).encode(), qos=1)
    out: dict[str, Any] = {"dialled_before_start": 0}
    results: set[str] = set()
    messages = aiter(c.messages)

    async def take() -> None:
        m = await anext(messages)
        e = json.loads(m.payload)  # type: ignore[arg-type,unused-ignore]
        if str(m.topic).endswith("/evt/command"):
            results.add(e["command_id"])
            if e["command_id"] == create["command_id"]:
                out["create"] = {"accepted": e["accepted"], "error": e["error"], "by": e["gateway_id"]}
        elif e["status"] != "initial":
            out["dialled_before_start"] += 1

    async with asyncio.timeout(120):
        while wait_create and "create" not in out:
            await take()
        for cmd in contacts:
            await c.publish("telgate/v1/cmd/dial", json.dumps({"campaign_id": campaign, **cmd}).encode(), qos=1)
        while len(results) < len(contacts) + 1:
            await take()
    await c.unsubscribe("telgate/v1/evt/command")
    start = {"command_id": f"{campaign}-start", "campaign_id": campaign, "action": "start"}
    await c.publish("telgate/v1/cmd/campaign", json.dumps(start).encode(), qos=1)
    return out


def sip_section(pbx: str, max_cps: float, attempts: int = 1, ring_timeout: int = 60) -> str:
    return (
        f"[retry]\nmax_attempts = {attempts}\ndelays_s = [0.5]\n"
        f'[sip]\npbx = "{pbx}"\nlocal = "127.0.0.1:0"\nmax_cps = {max_cps}\nmax_concurrent_calls = 20000\n'
        f"ring_timeout_s = {ring_timeout}\noptions_interval_s = 3600\n"
    )


async def run_dials(env: Env, tag: str, n: int, calls: int, hold_ms: int) -> dict[str, Any]:
    port = free_udp_port()
    sipp_dir = env.work / f"sipp-{tag}"
    sipp_dir.mkdir()
    uas = sipp_uas(SCENARIOS / "mix.xml", port, sipp_dir, "-d", str(hold_ms))
    result: dict[str, Any] = {"instances": n, "calls": calls}
    try:
        async with (
            cluster(env, tag, n, sip_section(f"127.0.0.1:{port}", MAX_CPS), scripted=False) as cl,
            client(env.broker.port, f"bench-{tag}") as c,
        ):
            await c.subscribe(f"telgate/v1/evt/contact/voice/{tag}w/#", qos=1)
            await warm_up(c, f"{tag}w", 20 * n)  # a fresh process's first calls are not its steady state
            camp = f"{tag}m"
            await c.subscribe(f"telgate/v1/evt/contact/voice/{camp}/#", qos=1)
            contacts = [
                {"command_id": f"{camp}-{i}", "contact_id": f"k{i:06d}", "phone": f"+420601{i:06d}"}
                for i in range(calls)
            ]
            meter = Meter(
                {k: p.pid for k, p in cl.procs.items()}
                | {
                    "broker": env.broker.proc.pid,  # type: ignore[union-attr]
                    "sipp": uas.pid,
                },
                {"postgres": env.pg.postmaster_pid() or 0},
            )
            result["queueing"] = await queue_draft(c, camp, contacts, wait_create=not RACE)
            stream = Stream()
            cpu0, t0 = meter.sample(), time.perf_counter()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(pump(c, stream))
                done = await stream.wait(lambda: len(stream.finals) >= calls, calls / 50 + 60)
                wall = time.perf_counter() - t0
                cpu1 = meter.sample()
                if not done:
                    result["not_final_diag"] = await asyncio.to_thread(store_diag, cl.url, stream, camp)
                reader.cancel()
            callings = [e for evs in stream.by_contact.values() for e in evs if e["status"] == "calling"]
            events = stream.unique()
            finals = {k: next(e for e in v if e["final"]) for k, v in stream.by_contact.items() if k in stream.finals}
            wrong = [
                k
                for k, e in finals.items()
                if (e["status"], e["signal"].get("sip_code") if e["status"] != "success" else None) != expected(k[1])
            ]
            result |= {
                "all_final": done,
                "seconds": round(wall, 2),
                "attempts_completed_per_s": round(len(finals) / wall, 1),
                "attempts_started_per_s": round(len(callings) / max(1e-3, stream.last_calling_at - t0), 1),
                "events_after_start": events,
                "events_per_s": round(events / wall, 1),
                "wrong_or_lost": len(wrong) + calls - len(finals),
                "started_by_instance": dict(Counter(e["gateway_id"].removeprefix(tag) for e in callings)),
            } | Meter.split(cpu0, cpu1, events, wall)
        result["check"] = stream.check(first_sequence=2)  # the `initial` events came while queueing
        result["check"]["store"] = store_check(cl.url, [camp])
        initials = sum(1 for evs in stream.by_contact.values() if any(e["sequence"] == 1 for e in evs))
        result["check"]["lost"] = result["check"]["store"]["events_decided"] - (calls - initials) - events
        result["check"]["exit_codes"] = exits(cl)
        result["logs"] = log_findings(cl.logs)
    finally:
        uas.kill()
        uas.wait()
    return result


async def run_takeover(env: Env, tag: str, lease_s: float, calls: int) -> dict[str, Any]:
    """Three instances dial SIPp (calls held 1.5 s, 2 attempts); gw1 is SIGKILLed with calls up."""
    out: dict[str, Any] = {"lease_s": lease_s, "calls": calls, "killed": "gw1"}
    with Sipp("mix.xml", env.work / f"sipp-{tag}", calls=100_000, extra=("-d", "1500")) as pbx:
        async with (
            backend(env.broker.url) as b,
            cluster(env, tag, 3, sip_section(pbx.address, 60, attempts=2), scripted=False, lease_s=lease_s) as cl,
        ):
            for i in range(calls):
                await b.send(
                    "dial",
                    {
                        "command_id": f"{tag}-{i}",
                        "campaign_id": tag,
                        "contact_id": f"v{i}",
                        "phone": f"+42060100{i:04d}",
                    },
                )
            victim = f"{tag}g1"

            def live_at(gw: str) -> int:
                last = [v[-1] for v in list(b.by_contact.values()) if v]
                return sum(1 for e in last if e["gateway_id"] == gw and e["status"] in ("calling", "call_in_progress"))

            await b.wait_for(lambda: live_at(victim) >= 5, timeout=30)
            out["victim_calls_up_at_kill"] = live_at(victim)
            out["commands_answered_before_kill"] = len({r["command_id"] for r in b.results})
            cl.procs["gw1"].send_signal(signal.SIGKILL)
            killed = time.monotonic()
            await asyncio.to_thread(cl.procs["gw1"].wait, 10)
            restarted: list[float] = []

            def taken_over() -> bool:
                if not restarted and any(
                    (e.get("signal") or {}).get("kind") == "gateway_restart" and e["gateway_id"] != victim
                    for e in list(b.events)
                ):
                    restarted.append(time.monotonic() - killed)
                return bool(restarted)

            try:
                await b.wait_for(taken_over, timeout=4 * lease_s + 10)
            except AssertionError:
                out["error"] = "no gateway_restart event from a survivor"
            try:
                await b.wait_for(lambda: all(b.final(tag, f"v{i}") for i in range(calls)), timeout=60 + 4 * lease_s)
            except AssertionError:
                out["not_final"] = sum(1 for i in range(calls) if not b.final(tag, f"v{i}"))
            ended = time.monotonic() - killed
            restart_events = [e for e in b.events if (e.get("signal") or {}).get("kind") == "gateway_restart"]
            out |= {
                "kill_to_first_gateway_restart_s": round(restarted[0], 2) if restarted else None,
                "bound_2_x_lease_s": 2 * lease_s,
                "kill_to_campaign_end_s": round(ended, 2),
                "restart_events": len(restart_events),
                "restart_events_by": dict(Counter(e["gateway_id"] for e in restart_events)),
                "restart_statuses": dict(Counter(e["status"] for e in restart_events)),
            }
            stream = Stream()
            stream.by_contact = b.by_contact
            out["check"] = stream.check()
            try:
                seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx), patience_s=5)
                out["check"]["invites"] = seen.wire
                out["check"]["attempts_in_events"] = seen.attempts
            except AssertionError as exc:
                out["check"]["ledger_mismatches"] = str(exc)[:600]
        out["check"]["store"] = store_check(cl.url, [tag])
        out["check"]["lost"] = out["check"]["store"]["events_decided"] - stream.unique()
        out["check"]["exit_codes"] = exits(cl)
        out["logs"] = log_findings(cl.logs)
    return out


# -- the report ---------------------------------------------------------------------------------------------


def median_run(runs: list[dict[str, Any]], rate: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
    return sorted(runs, key=rate)[len(runs) // 2]


def projection(per: dict[str, float], gateways: float, n: int, cores: int) -> float:
    """Events/s the measured CPU per event allows on `cores` cores with every process on one machine (the
    sum of all), and with each instance's single interpreter at most one core (its share of the gateways')."""
    return min(cores * 1000 / per["all of these"], n * 1000 / gateways)


def summarise(
    args: argparse.Namespace,
    sizes: list[int],
    events: dict[int, list[dict[str, Any]]],
    dials: dict[int, list[dict[str, Any]]],
    takeovers: list[dict[str, Any]],
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "machine": {
            "cores": os.cpu_count(),
            "load_avg_at_end": os.getloadavg()[0],
            "note": "shared: another engineer's test runs may overlap; read the ratios measured side by side",
        },
        "settings": {
            "instances": sizes,
            "rounds": args.rounds,
            "contacts": args.contacts,
            "paced": args.paced,
            "calls": args.calls,
            "hold_ms": args.hold_ms,
            "lease_s": args.lease_s,
            "sip_max_cps": f"{MAX_CPS} for the cluster ({MAX_CPS}/N each): far above the rates reached, not the limit",
            "postgres": "private server on its defaults (fsync on)",
        },
        "events": {},
        "dials": {},
        "takeover": takeovers,
    }
    base_e = base_d = None
    for n in sizes:
        if events.get(n):
            rates = [r["burst"]["events_per_s"] for r in events[n]]
            med = statistics.median(rates)
            base_e = base_e or med
            best = median_run(events[n], lambda r: float(r["burst"]["events_per_s"]))
            per = best["burst"]["cpu_s_per_1000_events"]
            gws = best["burst"]["gateways_cpu_s_per_1000_events"]
            out["events"][n] = {
                "events_per_s": round(med),
                "each_round": rates,
                "scaling": round(med / base_e, 2),
                "projected_events_per_s": {c: round(projection(per, gws, n, c)) for c in (2, 4, 8)},
                "median_round": best,
            }
        if dials.get(n):
            rates = [r["attempts_completed_per_s"] for r in dials[n]]
            med = statistics.median(rates)
            base_d = base_d or med
            best = median_run(dials[n], lambda r: float(r["attempts_completed_per_s"]))
            out["dials"][n] = {
                "attempts_completed_per_s": round(med, 1),
                "each_round": rates,
                "scaling": round(med / base_d, 2),
                "median_round": best,
            }
    return out


def problems(run: dict[str, Any]) -> int:
    c = run["check"]
    return int(
        run.get("queueing", {}).get("dialled_before_start", 0)
        + c["sequence_decided_twice"]
        + c["contacts_with_gaps"]
        + c["contacts_out_of_order"]
        + max(0, c["lost"])
        + len(c.get("ledger_mismatches") or [])
        + c["store"]["outbox_left_pending"]
        + sum(1 for k, v in c["exit_codes"].items() if v not in (0, None) and k != run.get("killed"))
    )


def markdown(rep: dict[str, Any]) -> str:
    ev, dl = rep["events"], rep["dials"]
    sizes = sorted(set(ev) | set(dl))
    head = "| measure | " + " | ".join(f"{n} instance{'s' if n > 1 else ''}" for n in sizes) + " |"
    lines = [head, "|---|" + "---|" * len(sizes)]

    def row(label: str, cell: Callable[[int], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(n) for n in sizes) + " |")

    def e(n: int) -> dict[str, Any]:
        return ev[n]["median_round"] if n in ev else {}

    def d(n: int) -> dict[str, Any]:
        return dl[n]["median_round"] if n in dl else {}

    if ev:
        row(
            "status events/s, scripted channels (each round)",
            lambda n: f"{ev[n]['events_per_s']:,} ({', '.join(f'{r:,.0f}' for r in ev[n]['each_round'])})",
        )
        row("scaling (events/s ÷ 1 instance)", lambda n: f"{ev[n]['scaling']:.2f}")
        row(
            "burst: command → first event p50 / p99",
            lambda n: (
                f"{e(n)['burst']['command_to_first_event_p50_ms'] / 1000:.2f} s / "
                f"{e(n)['burst']['command_to_first_event_p99_ms'] / 1000:.2f} s"
            ),
        )
        row(
            f"paced {rep['settings']['paced']:.0f} contacts/s: command → first event p50 / p99",
            lambda n: (
                f"{e(n)['paced']['command_to_first_event_p50_ms']} / "
                f"{e(n)['paced']['command_to_first_event_p99_ms']} ms"
            ),
        )
        row(
            "CPU s / 1,000 events: each instance",
            lambda n: " + ".join(
                f"{v:.2f}" for k, v in e(n)["burst"]["cpu_s_per_1000_events"].items() if k.startswith("gw")
            ),
        )
        for what in ("postgres", "broker", "backend (bench)", "all of these"):

            def cpu(n: int, what: str = what) -> str:
                return f"{e(n)['burst']['cpu_s_per_1000_events'][what]:.2f}"

            row(f"… {what}", cpu)
        row(
            "cores busy: gateways / PostgreSQL / machine (other load)",
            lambda n: (
                f"{sum(v for k, v in e(n)['burst']['cores_busy'].items() if k.startswith('gw')):.2f} / "
                f"{e(n)['burst']['cores_busy']['postgres']:.2f} / {e(n)['burst']['cores_busy']['machine']:.2f} "
                f"({e(n)['burst']['other_load_cores']:.2f})"
            ),
        )
        row(
            "events/s the CPU split allows on 2 / 4 / 8 cores (model)",
            lambda n: " / ".join(f"{v:,}" for v in ev[n]["projected_events_per_s"].values()),
        )
    if dl:
        row(
            f"SIPp: attempts completed/s (each round; {rep['settings']['calls']:,} calls, max_cps not the limit)",
            lambda n: f"{dl[n]['attempts_completed_per_s']:,} ({', '.join(str(r) for r in dl[n]['each_round'])})",
        )
        row("… scaling", lambda n: f"{dl[n]['scaling']:.2f}")
        row(
            "… INVITEs started/s, wrong or lost", lambda n: f"{d(n)['attempts_started_per_s']}, {d(n)['wrong_or_lost']}"
        )
        row(
            "… CPU s / 1,000 events: instances / PostgreSQL / broker / SIPp",
            lambda n: (
                f"{d(n)['gateways_cpu_s_per_1000_events']:.2f} / {d(n)['cpu_s_per_1000_events']['postgres']:.2f}"
                f" / {d(n)['cpu_s_per_1000_events']['broker']:.2f} / {d(n)['cpu_s_per_1000_events']['sipp']:.2f}"
            ),
        )
    runs = {
        n: [*(rep["events"][n]["all_runs"] if n in ev else []), *(rep["dials"][n]["all_runs"] if n in dl else [])]
        for n in sizes
    }
    row(
        "checks over all runs: problems (lost, gaps, decided twice, ledger) / repeats / CAS conflicts",
        lambda n: (
            f"{sum(problems(r) for r in runs[n])} / {sum(r['check']['repeats_same_event_id'] for r in runs[n])}"
            f" / {sum(r['logs']['cas_conflicts'] for r in runs[n])}"
        ),
    )
    out = "\n".join(lines)
    if rep["takeover"]:
        t = [
            "",
            "| takeover, 3 instances, one SIGKILLed | kill → first `gateway_restart` by a survivor"
            " | bound: twice lease_s | kill → campaign end | restart events | problems |",
            "|---|---|---|---|---|---|",
        ]
        for r in rep["takeover"]:
            t.append(
                f"| lease_s = {r['lease_s']:g} | {r['kill_to_first_gateway_restart_s']} s"
                f" | {r['bound_2_x_lease_s']:g} s"
                f" | {r['kill_to_campaign_end_s']} s | {r['restart_events']} | {problems(r)} |"
            )
        out += "\n" + "\n".join(t)
    return (
        out + "\n\nmodel: events/s <= min(cores x 1000 / the CPU s per 1,000 events of all these processes,"
        " N x 1000 / the instances' CPU s per 1,000 events): every process on one machine, each instance at most"
        " one core (one interpreter); repeats are at-least-once re-publications with the same event_id"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--contacts", type=int, default=3000, help="dial commands per burst (4 events each)")
    parser.add_argument("--paced", type=float, default=150.0, help="contacts/s offered in the latency phase (4 s)")
    parser.add_argument("--calls", type=int, default=1500, help="SIPp calls per cluster (0: no dial phase)")
    parser.add_argument("--hold-ms", type=int, default=200, help="how long SIPp holds an answered call")
    parser.add_argument("--rounds", type=int, default=2, help="every size takes its turn this many times")
    parser.add_argument("--lease-s", type=float, default=2.0, help="lease_s of the throughput phases")
    parser.add_argument("--takeover-leases", default="2,10", help="lease_s of each takeover run ('' for none)")
    parser.add_argument("--takeover-calls", type=int, default=300)
    parser.add_argument("--json", default="bench_scale.json")
    parser.add_argument("--keep", help="a folder to keep the instances' logs and configurations in")
    args = parser.parse_args()
    sizes = [int(s) for s in args.instances.split(",") if s.strip()]
    events: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    dials: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    takeovers: list[dict[str, Any]] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(running_postgres(()))
        work = Path(args.keep) if args.keep else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        broker = Mosquitto(work / "mosquitto")
        broker.start()
        env = Env(broker, pg, work, args.lease_s)
        try:
            for r in range(args.rounds):
                for n in sizes:
                    if args.contacts:
                        events[n].append(await run_events(env, f"e{r}n{n}", n, args.contacts, args.paced))
                        print(
                            f"round {r + 1}, {n} instance(s): {events[n][-1]['burst']['events_per_s']} events/s",
                            flush=True,
                        )
                for n in sizes:  # the same order again: the dial phase interleaves as the events phase did
                    if args.calls:
                        dials[n].append(await run_dials(env, f"d{r}n{n}", n, args.calls, args.hold_ms))
                        print(
                            f"round {r + 1}, {n} instance(s): {dials[n][-1]['attempts_completed_per_s']} attempts/s",
                            flush=True,
                        )
            for lease in (float(x) for x in args.takeover_leases.split(",") if x.strip()):
                takeovers.append(await run_takeover(env, f"t{int(lease)}", lease, args.takeover_calls))
                print(
                    f"takeover at lease_s {lease:g}: {takeovers[-1]['kill_to_first_gateway_restart_s']} s", flush=True
                )
        finally:
            broker.stop()
    rep = summarise(args, sizes, events, dials, takeovers)
    for n in sizes:
        if n in rep["events"]:
            rep["events"][n]["all_runs"] = events[n]
        if n in rep["dials"]:
            rep["dials"][n]["all_runs"] = dials[n]
    rep["wall_s"] = round(time.monotonic() - started)
    Path(args.json).write_text(json.dumps(rep, indent=2, default=str))
    print()
    print(markdown(rep))
    print(
        f"\n{rep['machine']['cores']} cores, shared with other sessions' test runs (load average at the end"
        f" {rep['machine']['load_avg_at_end']:.1f}); sip.max_cps = {MAX_CPS} for the cluster, above every rate"
        f" reached (not the limit); {rep['wall_s']} s; figures in {args.json}"
    )


if __name__ == "__main__":
    asyncio.run(main())
