"""Several instances on one PostgreSQL and one Mosquitto (SPEC §11, docs/cluster.md), with real peers:
SIPp as the PBX (tests/sipp/mix.xml: the dialled number's last digit picks the outcome) and the Cloud API
stand-in. Every test compares what the peers received with the events, across the instances."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from gateway.contract.wire import parse_command
from gateway.engine.commands import execute
from gateway.service.app import App
from sip.call_table import Phase
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, gateway, settings_for
from tests.support.postgres import Postgres
from tests.support.postgres import postgres_own_server as postgres_own_server  # a fixture
from tests.support.rumqttd import Rumqttd
from tests.support.sipp import Sipp
from tests.support.wa import SECRET, TOKEN, VERIFY
from whatsapp.standin import Scenario, StandIn

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 2.0
_names = itertools.count()


def check_stream(b: Backend) -> int:
    """Every contact's events form 1..n with no gap; a repeat carries the same event_id (SPEC §3: at least
    once, deduplicated on event_id). Returns the repeats."""
    repeats = 0
    by_seq: dict[tuple[str, str], dict[int, str]] = {}
    for e in b.events:
        seqs = by_seq.setdefault((e["campaign_id"], e["contact_id"]), {})
        seen = seqs.get(e["sequence"])
        if seen is not None:
            assert seen == e["event_id"], f"{e['contact_id']} sequence {e['sequence']} twice with different ids"
            repeats += 1
        seqs[e["sequence"]] = e["event_id"]
    for key, seqs in by_seq.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"gap in {key}: {sorted(seqs)}"
    for key, events in b.by_contact.items():  # and in sequence order as they arrived (repeats aside)
        firsts: list[int] = []
        for e in events:
            if e["sequence"] not in firsts:
                firsts.append(e["sequence"])
        assert firsts == sorted(firsts), f"{key} arrived out of order: {firsts}"
    return repeats


async def new_database(server: Postgres) -> str:
    return await asyncio.to_thread(server.create_database, f"cl{next(_names)}")


class Broker(Protocol):
    @property
    def url(self) -> str: ...


def instance(broker: Broker, tmp_path: Path, n: int, url: str, pbx: Sipp | None, standin: StandIn | None) -> Any:
    sections: dict[str, dict[str, Any]] = {
        "gateway": {"id": f"gw{n}", "lease_s": LEASE_S},
        "store": {"url": url},
        # one MQTT session per member id: a member stopped alone keeps its session in the share group
        # (its queued commands wait for it), so the same member comes back under the same client id
        "bus": {"client_id": f"telgate-gw{n}"},
    }
    if pbx is not None:
        sections["sip"] = {"pbx": pbx.address, "local": "127.0.0.1:0", "ring_timeout_s": 10, "max_cps": 150}
    if standin is not None:
        sections["whatsapp"] = {
            "api_base": standin.api_base,
            "phone_number_id": standin.phone_number_id,
            "access_token": TOKEN,
            "app_secret": SECRET,
            "verify_token": VERIFY,
            "max_mps": 200,
        }
    return settings_for(broker.url, tmp_path / f"gw{n}", **sections)


@contextlib.asynccontextmanager
async def cluster(
    broker: Broker, tmp_path: Path, n: int, url: str, pbx: Sipp | None, standin: StandIn | None
) -> AsyncIterator[list[App]]:
    async with contextlib.AsyncExitStack() as stack:
        apps = [
            await stack.enter_async_context(gateway(instance(broker, tmp_path, i + 1, url, pbx, standin), channels=()))
            for i in range(n)
        ]
        for _ in range(100):  # every member has its share of the partitions
            if all(a.cluster.size == n and a.cluster.parts() for a in apps):
                break
            await asyncio.sleep(0.1)
        assert all(a.cluster.size == n for a in apps), [a.cluster.members for a in apps]
        yield apps


def dial(i: int) -> dict[str, Any]:
    return {"command_id": f"d{i}", "campaign_id": "mix", "contact_id": f"v{i}", "phone": f"+42060100{i:04d}"}


def send(i: int) -> dict[str, Any]:
    return {
        "command_id": f"s{i}",
        "campaign_id": "wa",
        "contact_id": f"w{i}",
        "phone": f"+42077700{i:04d}",
        "template": {"name": "appointment_reminder", "language": "cs"},
    }


async def run_campaign(b: Backend, n_voice: int, n_wa: int) -> dict[tuple[str, str], list[str]]:
    for i in range(max(n_voice, n_wa)):
        if i < n_voice:
            await b.send("dial", dial(i))
        if i < n_wa:
            await b.send("send", send(i))
    keys = [("mix", f"v{i}") for i in range(n_voice)] + [("wa", f"w{i}") for i in range(n_wa)]
    try:
        await b.wait_for(lambda: all(b.final(*k) for k in keys), timeout=180)
    except AssertionError:
        missing = [k for k in keys if not b.final(*k)]
        ids = [f"d{k[1][1:]}" if k[0] == "mix" else f"s{k[1][1:]}" for k in missing]
        raise AssertionError(f"not final: {missing[:10]}; their results: {[b.result(i) for i in ids[:5]]}") from None
    await b.wait_for(lambda: len({r["command_id"] for r in b.results}) == n_voice + n_wa, timeout=30)
    return {k: [e["status"] for e in b.unique(*k)] for k in keys}


async def test_a_mixed_campaign_over_three_instances_gives_every_contact_what_one_instance_gives(
    broker: Mosquitto, session_postgres: Postgres, tmp_path: Path
) -> None:
    """One instance takes 100 + 100 contacts (every outcome of mix.xml ten times), three instances take
    600 + 600: each of those ends with the statuses one instance gave its like (same last digit). (The three
    instances share this test's process and event loop with the backend: at 1,000 + 1,000 beside the
    suite's other worker the backend's PUBACKs waited past aiomqtt's 10 s.)"""
    outcomes: list[dict[tuple[str, str], list[str]]] = []
    for members, n_voice, n_wa in ((1, 100, 100), (3, 600, 600)):
        url = await new_database(session_postgres)
        # on a loaded machine (the suite's other worker) the 2,000 contacts took over SIPp's default minute
        with Sipp("mix.xml", tmp_path / f"sipp{members}", calls=100_000, extra=("-d", "200"), timeout_s=300) as pbx:
            async with (
                # two POSTs on the wire at once may be taken in either order (a `read` first makes the later
                # `delivered` stale, by design); the stand-in POSTs a message's next status only once its
                # previous one was answered, so the input is the same in both runs at the default spacing
                # (spacing them 1 s apart hid that race, cf1b6c4: 40 of 600 contacts skipped a status on CI)
                StandIn(access_token=TOKEN, app_secret=SECRET, webhook_url="http://127.0.0.1:9/unset") as standin,
                backend(broker.url) as b,
                cluster(broker, tmp_path / f"n{members}", members, url, pbx, standin) as apps,
            ):
                # the Cloud API's webhooks reach the last instance: rarely the one that sent the message
                standin.webhook_url = f"http://127.0.0.1:{apps[-1].http_port}/webhooks/whatsapp"
                outcomes.append(await run_campaign(b, n_voice, n_wa))
                voice = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                wa = await ledger.check(b, "whatsapp", ledger.standin_sends(standin.received), by="contact")
                assert voice.compared == n_voice and wa.compared == n_wa
                check_stream(b)
                deciders = {e["gateway_id"] for e in b.events if e["status"] in ("calling", "in_progress")}
                assert len(deciders) == members, f"the attempts were started by {deciders}"
                published = sum(a.recorder.events_published._value.get() for a in apps)
                assert published >= len({e["event_id"] for e in b.events})
    single, three = outcomes

    def like(key: tuple[str, str]) -> tuple[str, str]:  # v1234 dials ...1234: its like is v34 of the 100
        return key[0], f"{key[1][0]}{int(key[1][1:]) % 100}"

    differ = {k: (single[like(k)], three[k]) for k in three if single[like(k)] != three[k]}
    assert not differ, f"{len(differ)} contacts differ from one instance's run: {list(differ.items())[:5]}"


async def test_the_same_webhook_posted_to_two_instances_at_once_is_one_event(
    broker: Mosquitto, session_postgres: Postgres, tmp_path: Path
) -> None:
    url = await new_database(session_postgres)
    quiet = Scenario(statuses=((0.02, "sent", None),))  # the stand-in says `sent`; the test says `delivered`
    async with (
        StandIn(
            access_token=TOKEN, app_secret=SECRET, webhook_url="http://127.0.0.1:9/unset", default=quiet
        ) as standin,
        backend(broker.url) as b,
        cluster(broker, tmp_path, 2, url, None, standin) as apps,
    ):
        standin.webhook_url = f"http://127.0.0.1:{apps[0].http_port}/webhooks/whatsapp"
        for i in range(20):
            await b.send("send", send(i))
        await b.wait_for(lambda: all(b.statuses("wa", f"w{i}")[-1:] == ["sent"] for i in range(20)), timeout=20)
        import aiohttp

        async with aiohttp.ClientSession() as http:

            async def post(port: int, body: bytes) -> int:
                headers = {"Content-Type": "application/json", "X-Hub-Signature-256": standin.sign(body)}
                async with http.post(f"http://127.0.0.1:{port}/webhooks/whatsapp", data=body, headers=headers) as r:
                    return r.status

            for sent in standin.sent:
                value = standin._status(sent.wamid, sent.to, "delivered", None, sent.callback_data)
                body = json.dumps(standin.envelope([value])).encode()
                codes = await asyncio.gather(*(post(a.http_port or 0, body) for a in apps))
                assert codes == [200, 200]
            await b.wait_for(lambda: all(b.statuses("wa", f"w{i}")[-1:] == ["delivered"] for i in range(20)))
            # a marker behind it: `read`, POSTed once both instances had answered 200 (each after its commit). A
            # second `delivered` would have been committed before it, and a contact's events reach the bus in
            # sequence order: once `read` is here, nothing more is on its way
            for sent in standin.sent:
                value = standin._status(sent.wamid, sent.to, "read", None, sent.callback_data)
                assert await post(apps[0].http_port or 0, json.dumps(standin.envelope([value])).encode()) == 200
        await b.wait_for(lambda: all(b.statuses("wa", f"w{i}")[-1:] == ["read"] for i in range(20)))
        for i in range(20):
            assert [e["status"] for e in b.unique("wa", f"w{i}")] == [
                "initial",
                "in_progress",
                "sent",
                "delivered",
                "read",
            ]
        check_stream(b)
        await ledger.check(b, "whatsapp", ledger.standin_sends(standin.received), by="contact")


async def test_a_cancel_taken_by_another_instance_cancels_the_call_on_the_wire(
    broker: Mosquitto, session_postgres: Postgres, tmp_path: Path
) -> None:
    url = await new_database(session_postgres)
    with Sipp("ring_forever.xml", tmp_path / "sipp", calls=100) as pbx:
        async with backend(broker.url) as b, cluster(broker, tmp_path, 2, url, pbx, None) as apps:
            for i in range(6):
                await b.send("dial", {**dial(i), "campaign_id": "ring"})
            await b.wait_for(lambda: all(b.statuses("ring", f"v{i}")[-1:] == ["calling"] for i in range(6)))
            # ringing: each call has had SIPp's 180 (its early phase at the instance that placed it)
            await b.wait_for(
                lambda: (
                    sum(c.phase is Phase.EARLY for a in apps if a.voice is not None for c in a.voice.ua.calls.values())
                    == 6
                )
            )
            owners = {f"v{i}": b.unique("ring", f"v{i}")[-1]["gateway_id"] for i in range(6)}
            by_id = {a.settings.gateway.id: a for a in apps}
            for contact, owner in owners.items():  # each cancel decided by the instance that is NOT the owner
                other = next(a for gid, a in by_id.items() if gid != owner)
                cmd = parse_command(
                    "cancel",
                    json.dumps({"command_id": f"x-{contact}", "campaign_id": "ring", "contact_id": contact}).encode(),
                )
                result = await other.engine.execute(
                    lambda u, cmd=cmd, other=other: execute(u, cmd, other.ctx, other.settings.gateway.id, None, None)
                )
                assert result.accepted, result
            await b.wait_for(lambda: all(b.final("ring", f"v{i}") for i in range(6)), timeout=15)
            for i in range(6):
                last = b.unique("ring", f"v{i}")[-1]
                assert last["status"] == "canceled_by_admin" and last["gateway_id"] != owners[f"v{i}"]

            def cancels() -> int:
                return sum(1 for m in pbx.messages() if re.search(r"^CANCEL sip:", m, re.MULTILINE))

            await b.wait_for(lambda: cancels() == 6, timeout=10)
            assert all(a.voice is not None and a.voice.active() == 0 for a in apps), "every call ended at its owner"
            await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            check_stream(b)


def _config(path: Path, n: int, broker: Mosquitto, url: str, pbx: Sipp) -> Path:
    cfg = path / f"gw{n}.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw{n}"\ndata_dir = "{path / f"gw{n}"}"\nlease_s = {LEASE_S}\ndrain_timeout_s = 5\n'
        f'[store]\nurl = "{url}"\n[bus]\nurl = "{broker.url}"\nclient_id = "telgate-gw{n}"\n'
        f'[http]\nlisten = "127.0.0.1:0"\n[retry]\nmax_attempts = 2\ndelays_s = [0.5]\n'
        f'[sip]\npbx = "{pbx.address}"\nlocal = "127.0.0.1:0"\nring_timeout_s = 10\nmax_cps = 40\n'
    )
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def test_sigkill_of_one_of_three_instances_is_taken_over_within_two_leases(
    broker: Mosquitto, session_postgres: Postgres, tmp_path: Path
) -> None:
    """One of three processes is SIGKILLed while its calls ring and talk: another member buries it within
    2 x lease_s, its calls get SPEC §9's restart rule, and every contact ends with no event lost or
    doubled and one INVITE per attempt at the PBX."""
    url = await new_database(session_postgres)
    n = 240
    with Sipp("mix.xml", tmp_path / "sipp", calls=100_000, extra=("-d", "1500")) as pbx:
        logs = [tmp_path / f"gw{i}.log" for i in (1, 2, 3)]
        procs = [_start(_config(tmp_path, i, broker, url, pbx), logs[i - 1]) for i in (1, 2, 3)]
        try:
            async with backend(broker.url) as b:
                await b.wait_for(lambda: all(b.presence.get(f"gw{i}") == "online" for i in (1, 2, 3)), timeout=30)
                # kept: a time rule, not an event: a member buries others only once its own lease has held
                # for 2 x lease_s (docs/cluster.md, "Burying"); the processes say nothing when that is so
                await asyncio.sleep(2 * LEASE_S)
                for i in range(n):
                    await b.send("dial", dial(i))

                def live_at(gw: str) -> int:
                    last = {k: v[-1] for k, v in b.by_contact.items() if v}
                    return sum(
                        1
                        for e in last.values()
                        if e["gateway_id"] == gw and e["status"] in ("calling", "call_in_progress")
                    )

                await b.wait_for(lambda: live_at("gw1") >= 5, timeout=30)
                procs[0].send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                procs[0].wait(10)
                restarted: list[float] = []

                def taken_over() -> bool:
                    if not restarted and any(
                        e.get("signal", {}).get("kind") == "gateway_restart" and e["gateway_id"] != "gw1"
                        for e in b.events
                    ):
                        restarted.append(time.monotonic() - killed_at)
                    return bool(restarted)

                await b.wait_for(taken_over, timeout=4 * LEASE_S)  # longer, to report how late it was
                # SPEC §11: within 2 x lease_s. The bound: expiry (lease_s after gw1's last renewal) + a renewal
                # period (lease_s / 3) + the takeover's commit and its publication (docs/cluster.md)
                assert restarted[0] < 2 * LEASE_S, f"taken over after {restarted[0]:.2f} s"
                await b.wait_for(lambda: all(b.final("mix", f"v{i}") for i in range(n)), timeout=90)
                repeats = check_stream(b)
                seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                assert seen.compared == n
                restart_events = [e for e in b.events if e.get("signal", {}).get("kind") == "gateway_restart"]
                assert restart_events and {e["gateway_id"] for e in restart_events} <= {"gw2", "gw3"}
                for e in restart_events:
                    assert e["status"] in ("retry_scheduled", "dial_failed", "success"), e
                took = [line for log in logs[1:] for line in log.read_text().splitlines() if "took over" in line]
                assert len(took) == 1 and re.search(r'"member": "gw1"', took[0]), took
                print(f"takeover after {restarted[0]:.2f} s, {len(restart_events)} contacts, {repeats} repeats")
        finally:
            for p in procs[1:]:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p, log in zip(procs[1:], logs[1:], strict=True):
                assert p.wait(20) == 0, log.read_text()[-3000:]


async def test_two_instances_on_a_second_independent_broker_rumqttd(session_postgres: Postgres, tmp_path: Path) -> None:
    """The same guarantees on another MQTT 5 broker's shared subscriptions (rumqttd: round robin over the
    connected members only, sessions in memory, Receive Maximum ignored; tests/support/rumqttd.py)."""
    url = await new_database(session_postgres)
    broker = Rumqttd(tmp_path / "rumqttd")
    broker.start()
    try:
        with Sipp("mix.xml", tmp_path / "sipp", calls=100_000, extra=("-d", "200")) as pbx:
            async with (
                StandIn(access_token=TOKEN, app_secret=SECRET, webhook_url="http://127.0.0.1:9/unset") as standin,
                backend(broker.url) as b,
                cluster(broker, tmp_path, 2, url, pbx, standin) as apps,
            ):
                standin.webhook_url = f"http://127.0.0.1:{apps[0].http_port}/webhooks/whatsapp"
                outcome = await run_campaign(b, 60, 60)
                await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                await ledger.check(b, "whatsapp", ledger.standin_sends(standin.received), by="contact")
                check_stream(b)
                assert {e["gateway_id"] for e in b.events if e["status"] in ("calling", "in_progress")} == {
                    "gw1",
                    "gw2",
                }
                assert all(
                    statuses[-1] in ("success", "completed_without_answer", "read") for statuses in outcome.values()
                )
    finally:
        broker.stop()


async def test_the_broker_and_then_postgresql_restarted_under_three_instances_lose_nothing(
    broker: Mosquitto,
    postgres_own_server: Postgres,
    tmp_path: Path,
) -> None:
    """Mid-campaign the broker restarts, then PostgreSQL is killed and started again (longer than a
    lease): every instance comes back by itself, nobody buries anybody, nothing is lost or doubled."""
    url = await new_database(postgres_own_server)
    n = 150
    with Sipp("mix.xml", tmp_path / "sipp", calls=100_000, extra=("-d", "300"), timeout_s=300) as pbx:
        async with backend(broker.url) as b, cluster(broker, tmp_path, 3, url, pbx, None) as apps:
            for i in range(n):
                await b.send("dial", {**dial(i), "policy": {"max_attempts": 2}})
            await b.wait_for(lambda: sum(1 for k in b.by_contact if b.final(*k)) >= n // 5, timeout=30)
            broker.stop()
            await asyncio.sleep(1.0)  # kept: the outage's length, the fault itself (nothing to wait for)
            broker.start()
            await b.wait_for(lambda: sum(1 for k in b.by_contact if b.final(*k)) >= n // 2, timeout=30)
            postgres_own_server.kill()
            await asyncio.sleep(LEASE_S * 1.5)  # every lease expires meanwhile
            assert all(a.cluster.fenced for a in apps), "without the store no member acts on its lease"
            postgres_own_server.start()
            await b.wait_for(lambda: all(b.final("mix", f"v{i}") for i in range(n)), timeout=60)
            check_stream(b)
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.compared == n
            assert not [e for e in b.events if e.get("signal", {}).get("kind") == "gateway_restart"], "nobody buried"
            # every member back, each seeing the three: alone this took 0-1.7 s after the last contact settled
            # (the first to renew after the outage sees itself alone until its next renewal, lease_s / 3
            # later); beside the suite's other worker 2 s was not always enough, so five leases
            for _ in range(int(LEASE_S * 50)):
                if all(a.cluster.size == 3 and not a.cluster.fenced for a in apps):
                    break
                await asyncio.sleep(0.1)
            assert all(a.cluster.size == 3 and not a.cluster.fenced for a in apps), [
                (a.cluster.members, a.cluster.fenced) for a in apps
            ]
            assert sum(a.recorder.cluster_takeovers._value.get() for a in apps) == 0
