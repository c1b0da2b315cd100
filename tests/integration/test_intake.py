"""A campaign upload loses nothing (issue 11): bursts of single and bulk commands against a real Mosquitto
with the shipped queue limits (tests/support/broker.py reads them from deploy/mosquitto/mosquitto.conf),
malformed bulks refused whole, and the gateway restarted in the middle of an upload.

The gateway runs as its own process (tests.support.run_scripted: the voice channel scripted) and every
contact waits in a draft campaign, so what is measured is the intake; the checks read the gateway's
SQLite store and what a paho subscriber received on the broker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support import harness
from tests.support.broker import Mosquitto, free_port, shipped_broker
from tests.support.certs import Pki
from tests.support.harness import backend, gateway, settings_for
from tests.support.settle import settled

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class Tap:
    """A paho subscriber on its own thread: CommandResults by command_id, and contact events counted."""

    def __init__(self, port: int) -> None:
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.initial: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{port}", protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.subscribe("telgate/v1/evt/#", qos=1)
        self.client.loop_start()

    def _message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        data = json.loads(m.payload)
        with self.lock:
            if m.topic == "telgate/v1/evt/command":
                self.results[data["command_id"]].append(data)
            elif m.topic.startswith("telgate/v1/evt/contact/") and data["sequence"] == 1:
                self.initial[(data["campaign_id"], data["contact_id"])] += 1

    async def wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate():
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}: {len(self.results)} results, {len(self.initial)} contacts")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def publish_all(port: int, items: list[tuple[str, bytes]]) -> None:
    """A backend's paho client publishing as fast as it can (QoS 1, PUBACKs awaited at the end)."""
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{free_port()}", protocol=mqtt.MQTTv5)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(topic, payload, qos=1) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(120)
    pub.loop_stop()
    pub.disconnect()


def single(campaign: str, i: int) -> tuple[str, bytes]:
    cmd = {"command_id": f"{campaign}-{i}", "campaign_id": campaign, "contact_id": f"k{i}", "phone": f"+420601{i:06d}"}
    return "telgate/v1/cmd/dial", json.dumps(cmd).encode()


def bulk(campaign: str, first: int, n: int = 1000) -> tuple[str, bytes]:
    contacts = [{"contact_id": f"k{i}", "phone": f"+420601{i:06d}"} for i in range(first, first + n)]
    cmd = {"command_id": f"{campaign}-b{first}", "campaign_id": campaign, "contacts": contacts}
    return "telgate/v1/cmd/dial", json.dumps(cmd).encode()


def draft(campaign: str) -> tuple[str, bytes]:
    cmd = {"command_id": f"{campaign}-create", "campaign_id": campaign, "action": "create"}
    return "telgate/v1/cmd/campaign", json.dumps(cmd).encode()


def start_gateway(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_scripted", str(cfg), "0"],
            cwd=ROOT,
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def write_config(tmp_path: Path, broker: Mosquitto, bus: str = "") -> Path:
    cfg = tmp_path / "telgate.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-intake"\ndata_dir = "{tmp_path / "var"}"\n'
        f'[bus]\nurl = "{broker.url}"\nclient_id = "telgate-intake"\n{bus}'
        f'[http]\nlisten = "127.0.0.1:0"\n[metrics]\ncampaign_label = false\n{harness.store_toml()}'
    )
    return cfg


def store_contacts(tmp_path: Path, campaign: str) -> tuple[int, int]:
    """(contacts, `initial` events written) of `campaign` in the gateway's store."""
    if harness.STORE_URL is not None:
        with psycopg.connect(harness.STORE_URL) as pg:
            row = pg.execute(
                "SELECT (SELECT COUNT(*) FROM contacts WHERE campaign_id=%s), (SELECT COUNT(*) FROM messages"
                " WHERE campaign_id=%s AND topic != '' AND convert_from(payload, 'UTF8') LIKE %s)",
                (campaign, campaign, '%"sequence":1,%'),
            ).fetchone()
            assert row is not None
            return int(row[0]), int(row[1])
    db = sqlite3.connect(tmp_path / "var" / "telgate.db")
    try:
        contacts = db.execute("SELECT COUNT(*) FROM contacts WHERE campaign_id=?", (campaign,)).fetchone()[0]
        initial = db.execute(
            "SELECT COUNT(*) FROM messages WHERE campaign_id=? AND topic != ''"
            " AND CAST(payload AS TEXT) LIKE '%\"sequence\":1,%'",
            (campaign,),
        ).fetchone()[0]
        return int(contacts), int(initial)
    finally:
        db.close()


async def wait_online(tap: Tap, log: Path) -> None:
    probe = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    seen = threading.Event()
    probe.on_message = lambda _c, _u, m: seen.set() if json.loads(m.payload)["state"] == "online" else None
    probe.connect("127.0.0.1", tap.client._port)
    probe.subscribe("telgate/v1/gateways/gw-intake/status", qos=1)
    probe.loop_start()
    try:
        for _ in range(300):
            if seen.is_set():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"gateway not online: {log.read_text()[-2000:]}")
    finally:
        probe.loop_stop()
        probe.disconnect()


async def test_a_burst_of_20000_single_dials_is_held_not_dropped(broker: Mosquitto, tmp_path: Path) -> None:
    """The reported loss: a backend publishing faster than the gateway commits. With the shipped queue
    limits and the gateway's Receive Maximum every command gets its result and its contact."""
    n = 20_000
    cfg, log = write_config(tmp_path, broker), tmp_path / "gateway.log"
    tap = Tap(broker.port)
    proc = start_gateway(cfg, log)
    try:
        await wait_online(tap, log)
        items = [draft("burst"), *(single("burst", i) for i in range(n))]
        await asyncio.to_thread(publish_all, broker.port, items)
        await tap.wait(lambda: len(tap.results) == n + 1, 300, "every result")
        await tap.wait(lambda: len(tap.initial) == n, 60, "every initial event")
        assert all(r[0]["accepted"] for r in tap.results.values())
        assert max(tap.initial.values()) == 1
        assert store_contacts(tmp_path, "burst") == (n, n)
    finally:
        tap.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-2000:]


async def test_a_burst_over_mqtt_tls(tmp_path: Path) -> None:
    """The gateway on the broker's TLS listener (`mqtts://`, the CA in `bus.ca_file`): a burst of single
    commands and bulk ones of ~55 KB, which TLS cuts into records read and written in pieces, all taken
    (gateway/bus/mqtt_io.py batches the socket's reads and writes under paho, TLS included)."""
    pki = Pki(tmp_path / "pki")
    server = pki.issue("broker")
    broker = Mosquitto(tmp_path / "mq", tls=(pki.ca, server.cert, server.key))
    broker.start()
    singles, bulks = 3000, 5
    cfg = write_config(tmp_path, broker, f'ca_file = "{pki.ca}"\n')
    cfg.write_text(cfg.read_text().replace(broker.url, f"mqtts://127.0.0.1:{broker.tls_port}"))
    log = tmp_path / "gateway.log"
    tap = Tap(broker.port)  # the backend on the plain listener of the same broker
    proc = start_gateway(cfg, log)
    try:
        await wait_online(tap, log)
        items = [draft("tls"), *(single("tls", i) for i in range(singles))]
        items += [bulk("tls", singles + 1000 * j) for j in range(bulks)]
        await asyncio.to_thread(publish_all, broker.port, items)
        n = singles + 1000 * bulks
        await tap.wait(lambda: len(tap.results) == singles + bulks + 1, 120, "every result")
        await tap.wait(lambda: len(tap.initial) == n, 60, "every initial event")
        assert all(r[0]["accepted"] for r in tap.results.values())
        assert max(tap.initial.values()) == 1
        assert store_contacts(tmp_path, "tls") == (n, n)
        mq_log = (tmp_path / "mq" / "mosquitto.log").read_text()
        assert "as telgate-intake" in mq_log and "OpenSSL Error" not in mq_log
    finally:
        tap.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-2000:]
        broker.stop()


@pytest.mark.both_stores  # the bus tests around it run on SQLite
async def test_100_bulk_commands_of_1000_contacts(broker: Mosquitto, tmp_path: Path) -> None:
    # 100,000 contacts on SQLite (issue 11's case); on PostgreSQL 30 bulks, 30,000 contacts, enough for the
    # store's set-wise writes at volume and keeping the whole suite under 10 minutes
    n_cmds = 100 if harness.STORE_URL is None else 30
    cfg, log = write_config(tmp_path, broker), tmp_path / "gateway.log"
    tap = Tap(broker.port)
    proc = start_gateway(cfg, log)
    try:
        await wait_online(tap, log)
        items = [draft("bulk"), *(bulk("bulk", c * 1000) for c in range(n_cmds))]
        await asyncio.to_thread(publish_all, broker.port, items)
        await tap.wait(lambda: len(tap.results) == n_cmds + 1, 300, "every result")
        await tap.wait(lambda: len(tap.initial) == n_cmds * 1000, 120, "every initial event")
        for cid, results in tap.results.items():
            if cid != "bulk-create":
                assert results[0]["contacts_accepted"] == 1000 and results[0]["contacts_refused"] == [], results
        assert store_contacts(tmp_path, "bulk") == (n_cmds * 1000, n_cmds * 1000)
    finally:
        tap.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-2000:]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_gateway_restarted_in_the_middle_of_an_upload(broker: Mosquitto, tmp_path: Path, how: str) -> None:
    """20,000 contacts (10,000 single commands and 10 bulk commands, interleaved) published at once; the
    gateway stops part-way and starts again. Every command gets exactly one result that is not a repeat
    (a repeat, flagged `duplicate`, may follow one whose PUBACK the kill lost), no contact is created
    twice, and every contact's `initial` event is on the broker."""
    cfg, log = write_config(tmp_path, broker), tmp_path / "gateway.log"
    tap = Tap(broker.port)
    proc = start_gateway(cfg, log)
    try:
        await wait_online(tap, log)
        items = [draft("up")]
        for c in range(10):
            items.append(bulk("up", 100_000 + c * 1000))
            items += [single("up", c * 1000 + i) for i in range(1000)]
        ids = {json.loads(payload)["command_id"] for _topic, payload in items}
        publisher = asyncio.create_task(asyncio.to_thread(publish_all, broker.port, items))
        await tap.wait(lambda: len(tap.results) >= 4000, 120, "a part of the upload")
        proc.send_signal(getattr(signal, how))
        assert proc.wait(60) == (0 if how == "SIGTERM" else -signal.SIGKILL), log.read_text()[-2000:]
        partial = len(tap.results)
        proc = start_gateway(cfg, log)
        await publisher
        await tap.wait(lambda: set(tap.results) == ids, 300, "a result for every command")
        assert partial < len(ids)  # the stop really came in the middle
        for cid, results in tap.results.items():
            # at least once: a result whose PUBACK the kill lost is published again, the same message
            firsts = {json.dumps(r, sort_keys=True) for r in results if not r["duplicate"]}
            assert len(firsts) == 1, (cid, results)
            assert all(r["accepted"] for r in results), results
        await tap.wait(lambda: len(tap.initial) == 20_000, 60, "every initial event")
        assert store_contacts(tmp_path, "up") == (20_000, 20_000)
        assert max(tap.initial.values()) <= 2  # at least once: a repeat carries the same event
    finally:
        tap.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


async def test_a_malformed_bulk_is_refused_whole_naming_the_entry(broker: Mosquitto, tmp_path: Path) -> None:
    entries = [{"contact_id": f"k{i}", "phone": f"+420601{i:06d}"} for i in range(1001)]
    no_phone = [dict(e) for e in entries[:1000]]
    del no_phone[516]["phone"]
    big = [{**e, "meta": {"notes": "x" * 1100}} for e in entries[:1000]]
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        for cid, contacts, code, field in (
            ("no-phone", no_phone, "missing_field", "contacts[516].phone"),
            ("too-many", entries, "invalid_field", "contacts"),
            ("too-big", big, "payload_too_large", None),
        ):
            await b.send("dial", {"command_id": cid, "campaign_id": "bad", "contacts": contacts})
            await b.wait_for(lambda cid=cid: b.result(cid) is not None)  # type: ignore[misc]
            result = b.result(cid)
            assert result is not None and not result["accepted"]
            assert (result["error"]["code"], result["error"]["field"]) == (code, field), result
        counts = await app.store.run(lambda txn: txn.all_counts())
        assert [c for c in counts if c[0] == "bad"] == []  # nothing of them applied
        assert b.events == []


async def test_bulk_refuses_contacts_one_by_one_and_is_idempotent(broker: Mosquitto, tmp_path: Path) -> None:
    contacts: list[dict[str, Any]] = [{"contact_id": f"k{i}", "phone": f"+420601{i:06d}"} for i in range(6)]
    contacts[2]["phone"] = "not a number"  # created, then invalid_record: not a refusal
    contacts[4]["contact_id"] = "k1"  # the same contact twice in one command
    contacts[5]["meta"] = {"crm": "A-5"}
    command = {"command_id": "b1", "campaign_id": "mix", "contacts": contacts, "meta": {"list": "spring"}}
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        await b.send("campaign", {"command_id": "c", "campaign_id": "mix", "action": "create"})
        await b.send("dial", command)
        await b.wait_for(lambda: b.result("b1") is not None)
        first = b.result("b1")
        assert first is not None and first["accepted"] and not first["duplicate"]
        assert (first["contacts_accepted"], first["contacts_invalid"]) == (5, 1)
        assert first["contacts_refused"] == [
            {
                "contact_id": "k1",
                "code": "contact_busy",
                "field": "contacts[4].contact_id",
                "message": "dial: contact_busy",
            }
        ]
        await b.wait_for(lambda: len({e["contact_id"] for e in b.events}) == 5)
        assert b.statuses("mix", "k2") == ["initial", "invalid_record"]
        assert b.unique("mix", "k5")[0]["meta"] == {"crm": "A-5"}  # an entry's meta wins
        assert b.unique("mix", "k0")[0]["meta"] == {"list": "spring"}  # else the command's
        events = len(b.events)
        await b.send("dial", command)  # the backend re-publishes: answered again, nothing applied again
        await b.wait_for(lambda: len([r for r in b.results if r["command_id"] == "b1"]) == 2)
        again = [r for r in b.results if r["command_id"] == "b1"][-1]
        assert (
            again["duplicate"]
            and again["contacts_accepted"] == 5
            and again["contacts_refused"] == first["contacts_refused"]
        )
        counts = await app.store.run(lambda txn: txn.all_counts())
        assert sum(c[3] for c in counts if c[0] == "mix") == 5
        await settled(b, app)  # whatever the second one committed is published and here
        assert len(b.events) == events


async def test_a_publish_the_broker_refuses_leaves_the_outbox(tmp_path: Path) -> None:
    """The shipped ACL lets the gateway write only under telgate/: a Response Topic elsewhere is refused
    (PUBACK 0x87). The refusal is counted and logged and the row leaves the outbox: retried forever it
    would hold the backlog gauge, its alert and every drain."""
    broker = shipped_broker(tmp_path)
    broker.start()
    try:
        settings = settings_for(
            broker.url, tmp_path, bus={"username": "telgate", "password": broker.passwords["telgate"]}
        )
        async with gateway(settings) as app:
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crm", protocol=mqtt.MQTTv5)
            pub.username_pw_set("backend", broker.passwords["backend"])
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = "crm/replies"  # not the gateway's to write
            cmd = {"command_id": "r1", "campaign_id": "acl", "action": "create"}
            pub.publish("telgate/v1/cmd/campaign", json.dumps(cmd), qos=1, properties=props).wait_for_publish(5)
            sample = app.recorder.registry.get_sample_value
            deadline = time.monotonic() + 10
            while sample("telgate_bus_publish_refused_total") != 1.0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert sample("telgate_bus_publish_refused_total") == 1.0
            while await app.bus.pending() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await app.bus.pending() == 0  # the result on evt/command went out, the refused copy left
            pub.loop_stop()
            pub.disconnect()
    finally:
        broker.stop()
