"""Outbox rows that can never be published move to the dead letters (SPEC §3, DESIGN habit 15).

A row the client refuses (a wildcard, a control character or bytes that are not UTF-8 in its topic, a
payload over the limit) and one the broker refuses (PUBACK 0x87 from the shipped ACL) are moved aside
with their reason, counted and listed by `telgate dead-letters`, while the valid rows behind them are
published and the gateway goes on serving. And the poison left behind: a gateway SIGKILLed while such
rows sit in its outbox comes up and serves on the next start (before, every start crashed on them), and
on PostgreSQL a second member takes the dead member's outbox partitions over, poison and all, and serves on
(before, every member that took them crashed in turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.store import DeadLetter, Store, Txn, open_store, partition
from tests.support import harness
from tests.support.broker import Mosquitto, shipped_broker
from tests.support.harness import backend, gateway, settings_for
from tests.support.postgres import Postgres

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TOO_LARGE = b"x" * (1024 * 1024 + 1)  # over the largest payload SPEC §3 allows on the bus


def telgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def store_url(data: Path) -> str:
    return harness.STORE_URL or f"sqlite:///{data / 'telgate.db'}"


def not_utf8_row(data: Path, payload: bytes) -> None:
    """A raw row whose topic holds a byte that is not UTF-8 (SQLite keeps it; PostgreSQL's text cannot)."""
    with sqlite3.connect(data / "telgate.db", timeout=10) as db:
        db.execute(
            "INSERT INTO messages (topic, payload, retain, created_at, pending)"
            " VALUES (CAST(x'74656c676174652f76312f6576742fff' AS TEXT), ?, 0, 0, 1)",
            (payload,),
        )


async def dead_letters(url: str) -> list[DeadLetter]:
    store = open_store(url)
    await store.open()
    try:
        return await store.read(lambda t: t.dead_letters(100))
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def reader(broker: Mosquitto, messages: list[tuple[str, dict[str, Any]]]) -> AsyncIterator[aiomqtt.Client]:
    """The shipped broker's `backend` user, reading what telgate publishes."""
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username="backend",
        password=broker.passwords["backend"],
        protocol=aiomqtt.ProtocolVersion.V5,
    ) as client:
        await client.subscribe("telgate/v1/evt/#", qos=1)
        await client.subscribe("telgate/v1/replies/#", qos=1)

        async def take() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                messages.append((str(message.topic), json.loads(message.payload)))

        task = asyncio.create_task(take())
        try:
            yield client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _log_lines(log: Path) -> list[dict[str, Any]]:
    """A gateway's JSON log lines, as written so far (the last one only once it is whole)."""
    text = log.read_text() if log.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.startswith("{") and line.endswith("\n")]


async def until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.mark.both_stores
async def test_rows_that_can_never_go_move_aside_and_the_rows_behind_them_go(tmp_path: Path, store_kind: str) -> None:
    broker = shipped_broker(tmp_path)
    broker.start()
    data = tmp_path / "var"
    try:
        settings = settings_for(broker.url, data, bus={"username": "telgate", "password": broker.passwords["telgate"]})
        got: list[tuple[str, dict[str, Any]]] = []
        async with gateway(settings) as app, reader(broker, got) as client:

            def write(t: Txn) -> None:
                # what a bug, or a bad Response Topic taken before the intake refused them, leaves behind
                t.add_outbox("telgate/v1/replies/crm/#", b'{"n": 0}', correlation=b"c0")
                t.add_outbox("telgate/v1/replies/ok", b'{"n": 1}')
                t.add_outbox("crm/replies", b'{"n": 2}', correlation=b"c2")  # outside telgate's ACL: 0x87
                t.add_outbox("telgate/v1/replies/bell\x07", b'{"n": 3}')  # Mosquitto would drop the link
                t.add_outbox("telgate/v1/replies/ok", b'{"n": 4}')
                t.add_outbox("telgate/v1/replies/big", TOO_LARGE)
                t.add_outbox("telgate/v1/replies/ok", b'{"n": 6}')

            if store_kind == "sqlite":
                not_utf8_row(data, b'{"n": -1}')
            await app.store.run(write)
            app.bus.notify()
            await until(lambda: [m["n"] for t, m in got if t == "telgate/v1/replies/ok"] == [1, 4, 6])
            sample = app.recorder.registry.get_sample_value

            def dead(reason: str) -> float | None:
                return sample("telgate_outbox_dead_letters_total", {"reason": reason})

            invalid = 3 if store_kind == "sqlite" else 2
            await until(lambda: dead("broker_refused") == 1.0)
            assert (dead("invalid_topic"), dead("too_large"), dead("client_refused")) == (invalid, 1.0, 0.0)
            async with asyncio.timeout(10):  # the dead letters left the outbox, the published rows too
                while await app.bus.pending():
                    await asyncio.sleep(0.02)
            listed = await app.store.read(lambda t: t.dead_letters(100))
            reasons = {d.topic: d.reason.split(":")[0] for d in listed}
            expected = {
                "telgate/v1/replies/crm/#": "invalid_topic",
                "crm/replies": "broker_refused",
                "telgate/v1/replies/bell\x07": "invalid_topic",
                "telgate/v1/replies/big": "too_large",
            }
            if store_kind == "sqlite":
                expected["telgate/v1/evt/\udcff"] = "invalid_topic"
            assert reasons == expected
            assert next(d for d in listed if d.topic == "crm/replies").correlation == b"c2"
            assert "0x87" in next(d for d in listed if d.topic == "crm/replies").reason

            # the gateway goes on serving: a command is answered
            cmd = {"command_id": "after", "campaign_id": "dl", "action": "create"}
            await client.publish("telgate/v1/cmd/campaign", json.dumps(cmd), qos=1)
            await until(lambda: any(m.get("command_id") == "after" for t, m in got if t == "telgate/v1/evt/command"))
            assert app.bus.connected.is_set()

            # and an operator lists them
            cfg = tmp_path / "telgate.toml"
            cfg.write_text(f'[gateway]\ndata_dir = "{data}"\n{harness.store_toml()}')
            out = await asyncio.to_thread(telgate, "dead-letters", "--config", str(cfg), "--json", "--payload")
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)
            assert [r["id"] for r in rows] == [d.id for d in listed]
            assert {r["topic"]: r["reason"].split(":")[0] for r in rows} == {
                t.encode("utf-8", "backslashreplace").decode(): r for t, r in expected.items()
            }
            assert next(r for r in rows if r["topic"] == "crm/replies")["payload"] == '{"n": 2}'
            brief = await asyncio.to_thread(telgate, "dead-letters", "--config", str(cfg), "--limit", "1")
            assert brief.returncode == 0 and len(brief.stdout.splitlines()) == 1
            assert brief.stdout.startswith(f"{listed[0].id}\t")
    finally:
        broker.stop()


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.run_scripted", str(cfg), "0.05"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.both_stores
async def test_poison_left_in_the_outbox_by_a_killed_gateway_does_not_stop_the_next_start(
    broker: Mosquitto, tmp_path: Path, store_kind: str
) -> None:
    data = tmp_path / "var"
    cfg = tmp_path / "telgate.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-poison"\ndata_dir = "{data}"\n[bus]\nurl = "{broker.url}"\n'
        f'client_id = "telgate-poison"\n[http]\nlisten = "127.0.0.1:0"\n{harness.store_toml()}'
    )
    log = tmp_path / "gateway.log"
    proc = _start(cfg, log)
    try:
        async with backend(broker.url) as b:
            await b.wait_for(lambda: b.presence.get("gw-poison") == "online", timeout=20)
            dial = {"command_id": "d1", "campaign_id": "p", "contact_id": "k1", "phone": "+420601234560"}
            await b.send("dial", dial)
            await b.wait_for(lambda: b.final("p", "k1"), timeout=20)

            # the broker goes away, the rows are committed and sit in the outbox, the gateway is killed
            broker.stop()
            store: Store = open_store(store_url(data))
            await store.open()
            try:

                def write(t: Txn) -> None:
                    t.add_outbox("telgate/v1/evt/command/+", b'{"n": 0}')
                    t.add_outbox("backend/left-behind", b'{"n": 1}')
                    t.add_outbox("telgate/v1/evt/\x1b[0m", b'{"n": 2}')
                    t.add_outbox("backend/too-large", TOO_LARGE)
                    t.add_outbox("backend/left-behind", b'{"n": 4}')

                await store.run(write)
            finally:
                await store.close()
            if store_kind == "sqlite":
                not_utf8_row(data, b'{"n": 5}')
            # the gateway saw the broker go (its log says so) before it dies: nothing was published
            await until(lambda: any(line.get("msg") == "bus disconnected" for line in _log_lines(log)))
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)

            broker.start()
            b.presence.clear()
            proc = _start(cfg, log)
            await b.wait_for(lambda: b.presence.get("gw-poison") == "online", timeout=20)
            await b.wait_for(lambda: [r[1]["n"] for r in b.responses] == [1, 4], timeout=20)
            await b.send("dial", {**dial, "command_id": "d2", "contact_id": "k2"})
            await b.wait_for(lambda: b.final("p", "k2"), timeout=20)
            assert proc.poll() is None, "the gateway stays up"
            dead = await dead_letters(store_url(data))
            assert sorted(d.reason.split(":")[0] for d in dead) == sorted(
                ["invalid_topic", "invalid_topic", "too_large"] + (["invalid_topic"] if store_kind == "sqlite" else [])
            )
            out = await asyncio.to_thread(telgate, "dead-letters", "--config", str(cfg))
            assert out.returncode == 0, out.stderr
            assert len(out.stdout.splitlines()) == len(dead)
            assert "telgate/v1/evt/command/+\tinvalid_topic" in out.stdout
            lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
            moved = [line for line in lines if line.get("msg") == "outbox row moved to the dead letters"]
            assert len(moved) == len(dead) and all(line["level"] == "error" for line in moved), moved
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


LEASE_S = 2.0


def _member_config(tmp_path: Path, name: str, broker: Mosquitto, url: str) -> Path:
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        f'[gateway]\nid = "{name}"\ndata_dir = "{tmp_path / name}"\nlease_s = {LEASE_S}\n'
        f'[bus]\nurl = "{broker.url}"\nclient_id = "telgate-{name}"\n[http]\nlisten = "127.0.0.1:0"\n'
        f'[store]\nurl = "{url}"\n'
    )
    return cfg


def _held(url: str, member: str) -> set[int]:
    """The outbox partitions `member` holds a live lease on, as the store says."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT part FROM partitions WHERE owner = %s AND expires_at > now()", (member,)).fetchall()
    return {int(r[0]) for r in rows}


async def test_on_postgresql_a_second_member_takes_over_the_poisoned_outbox_partition(
    broker: Mosquitto, session_postgres: Postgres, tmp_path: Path
) -> None:
    """Two members on one PostgreSQL; rows that can never be published sit in a partition of member A,
    with valid rows behind them, when A is SIGKILLed. B takes the partition over within 2 x lease_s, moves
    the poison to the dead letters, publishes the valid rows in order, and stays up serving commands."""
    url = await asyncio.to_thread(session_postgres.create_database, "dead_letters_takeover")
    logs = {name: tmp_path / f"{name}.log" for name in ("gw-a", "gw-b")}
    procs = {name: _start(_member_config(tmp_path, name, broker, url), logs[name]) for name in logs}
    try:
        async with backend(broker.url) as b:
            await b.wait_for(lambda: all(b.presence.get(name) == "online" for name in procs), timeout=20)
            # each holds its share of the partitions, and its lease long enough to bury a dead member
            async with asyncio.timeout(10):
                while not all(await asyncio.gather(*(asyncio.to_thread(_held, url, n) for n in procs))):
                    await asyncio.sleep(0.1)
            # kept: a member buries another only once it has held its lease 2 x lease_s without a lapse
            # (gateway/cluster/lease.py, the rule under test); nothing observable outside B says when it has
            await asyncio.sleep(2 * LEASE_S)
            held_by_a = await asyncio.to_thread(_held, url, "gw-a")
            key = next(k for k in (f"poison{i}" for i in itertools.count()) if partition(k) in held_by_a)

            store: Store = open_store(url)
            await store.open()
            try:

                def write(t: Txn) -> None:  # all in A's partition, in this order
                    t.add_outbox("telgate/v1/evt/bad/#", b'{"n": 0}', part_key=key)
                    t.add_outbox("backend/behind", b'{"n": 1}', part_key=key)
                    t.add_outbox("telgate/v1/evt/\x1b[0m", b'{"n": 2}', part_key=key)
                    t.add_outbox("backend/too-large", TOO_LARGE, part_key=key)
                    t.add_outbox("backend/behind", b'{"n": 4}', part_key=key)

                # A is frozen before the rows are committed (it never sees them), then killed
                procs["gw-a"].send_signal(signal.SIGSTOP)
                await store.run(write)
            finally:
                procs["gw-a"].send_signal(signal.SIGKILL)
                await store.close()
            killed_at = time.monotonic()
            await asyncio.to_thread(procs["gw-a"].wait, 10)

            await b.wait_for(lambda: [r[1]["n"] for r in b.responses] == [1, 4], timeout=4 * LEASE_S)
            taken = time.monotonic() - killed_at
            # bounded by the lease: A's expiry (lease_s after its last renewal) + B's renewal period (lease_s / 3)
            # + the publication
            assert taken < 2 * LEASE_S + 1.0, f"published after {taken:.2f} s"
            print(f"B published the rows behind the poison {taken:.2f} s after A was killed")
            assert partition(key) in await asyncio.to_thread(_held, url, "gw-b")
            dead = await dead_letters(url)
            assert sorted((d.topic, d.reason.split(":")[0]) for d in dead) == sorted(
                [
                    ("telgate/v1/evt/bad/#", "invalid_topic"),
                    ("telgate/v1/evt/\x1b[0m", "invalid_topic"),
                    ("backend/too-large", "too_large"),
                ]
            )
            assert {d.part for d in dead} == {partition(key)}

            # B stays up and answers a command (A's bus session was ended with it: nothing waits for A)
            dial = {"command_id": "after", "campaign_id": "p", "contact_id": "k1", "phone": "+420601234560"}
            await b.send("dial", dial)
            await b.wait_for(lambda: b.final("p", "k1"), timeout=10)
            result = b.result("after")
            assert result is not None and result["accepted"], result
            assert procs["gw-b"].poll() is None, "the member that took the poison over stays up"
            lines = [json.loads(ln) for ln in logs["gw-b"].read_text().splitlines() if ln.startswith("{")]
            moved = [ln for ln in lines if ln.get("msg") == "outbox row moved to the dead letters"]
            assert len(moved) == 3, moved
            took = [ln for ln in lines if ln.get("msg") == "took over a member whose lease expired"]
            assert [ln.get("member") for ln in took] == ["gw-a"], took
    finally:
        for name, proc in procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 20) == 0, logs[name].read_text()[-3000:]
