"""WhatsApp end to end: gateway → Cloud API stand-in (real HTTP) → signed webhooks → events on Mosquitto."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import CORPORA
from tests.support.broker import Mosquitto
from tests.support.harness import backend, store_toml
from tests.support.settle import settled
from tests.support.wa import SECRET, VERIFY, send, wa_ledger, wa_rig
from whatsapp.standin import Scenario
from whatsapp.webhook import signature

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]
NO_HOOKS: tuple[Any, ...] = ()


POLICY = {"max_attempts": 2, "delays_s": [0.1]}

# number → (scenario, expected statuses, evidence checks on the last event)
ROWS: dict[str, tuple[Scenario, list[str], dict[str, Any]]] = {
    "420601000001": (Scenario(), ["initial", "in_progress", "sent", "delivered", "read"], {"kind": "read"}),
    "420601000002": (
        Scenario(statuses=((0.02, "sent", None), (0.05, "read", None))),
        ["initial", "in_progress", "sent", "read"],
        {},
    ),
    "420601000003": (
        Scenario(statuses=((0.02, "played", None),)),
        ["initial", "in_progress", "read"],
        {"kind": "played"},
    ),
    "420601000004": (
        Scenario(send_error=(400, 131026)),
        ["initial", "in_progress", "sending_failed"],
        {"wa_error_code": 131026, "kind": "api_error"},
    ),
    "420601000005": (
        Scenario(statuses=((0.02, "sent", None), (0.04, "failed", 131026))),
        ["initial", "in_progress", "sent", "sending_failed"],
        {"wa_error_code": 131026},
    ),
    "420601000006": (
        Scenario(statuses=((0.02, "sent", None), (0.04, "failed", 131047), (0.3, "delivered", None))),
        ["initial", "in_progress", "sent", "delivery_failed", "delivered"],
        {"kind": "delivered"},
    ),
    "420601000007": (
        Scenario(send_error=(429, 130429)),
        ["initial", "in_progress", "retry_scheduled", "in_progress", "error"],
        {"wa_error_code": 130429},
    ),
    "420601000008": (
        Scenario(send_error=(503, 131000)),
        ["initial", "in_progress", "retry_scheduled", "in_progress", "error"],
        {"http_status": 503},
    ),
    "420601000009": (
        Scenario(statuses=((0.02, "failed", 131049),)),
        ["initial", "in_progress", "retry_scheduled"],
        {"wa_error_code": 131049},
    ),
    "420601000010": (
        Scenario(send_error=(400, 131008)),
        ["initial", "in_progress", "invalid_record"],
        {"wa_error_code": 131008},
    ),
    "420601000011": (Scenario(send_error=(400, 100)), ["initial", "in_progress", "invalid_record"], {}),
}


def check_evidence(event: dict[str, Any], expected: dict[str, Any]) -> None:
    for k, v in expected.items():
        assert event["signal"][k] == v, (k, event["signal"])


async def test_every_row_of_the_signal_table(broker: Mosquitto, tmp_path: Path) -> None:
    scenarios = {n: s for n, (s, _, _) in ROWS.items()}
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, scenarios) as (app, standin):
        for i, number in enumerate(ROWS):
            await b.send("send", send(f"s{i}", f"k{i}", number, policy=POLICY))
        want = {f"k{i}": expected for i, (_, expected, _) in enumerate(ROWS.values())}
        await b.wait_for(lambda: all(b.statuses("wa", k) == v for k, v in want.items()), timeout=15)
        await settled(b, app, lambda: standin.outstanding == 0)  # nothing more arrives: every webhook in
        for i, (_, expected, evidence) in enumerate(ROWS.values()):
            events = b.by_contact[("wa", f"k{i}")]
            assert [e["status"] for e in events] == expected
            check_evidence(events[-1], evidence)
            assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
        read = b.by_contact[("wa", "k0")]
        assert read[-1]["signal"]["wa_message_id"].startswith("wamid.") and read[-1]["signal"]["status_timestamp"]
        pair = b.by_contact[("wa", "k8")][-1]
        gap = datetime.fromisoformat(pair["retry_at"]) - datetime.fromisoformat(pair["occurred_at"])
        assert gap.total_seconds() >= 86_400
        bodies = {s.to: s for s in standin.sent}
        assert bodies["420601000001"].callback_data == "wa/k0/1"
        # the wire ledger (SPEC §9): every send request the stand-in received, refused ones included, is an
        # attempt in the events — one per row, two for the rows retried after 130429 and 503 (k6, k7)
        seen = await wa_ledger(b, standin)
        assert (seen.compared, seen.attempts, seen.wire) == (len(ROWS), len(ROWS) + 2, len(ROWS) + 2)
        per_contact = Counter((s.callback_data or "").rsplit("/", 1)[0] for s in standin.received)
        assert per_contact["wa/k6"] == per_contact["wa/k7"] == 2


async def test_account_error_pauses_the_campaign(broker: Mosquitto, tmp_path: Path) -> None:
    scenarios = {
        "420601000020": Scenario(send_error=(401, 190)),
        "420601000021": Scenario(statuses=NO_HOOKS, errors_after_s=0.05, error_code=131031),
    }
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, scenarios) as (_app, standin):
        await b.send("send", send("a1", "k1", "420601000020", campaign="acct"))
        await b.wait_for(lambda: b.final("acct", "k1"))
        assert b.statuses("acct", "k1")[-1] == "error"
        assert b.by_contact[("acct", "k1")][-1]["signal"]["wa_error_code"] == 190
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns if c["campaign_id"] == "acct"))
        paused = [c for c in b.campaigns if c["campaign_id"] == "acct"][-1]
        assert "190" in paused["reason"]
        # value-level (account) errors in a webhook pause the campaigns sending through the account
        await b.send("send", send("a2", "k2", "420601000021", campaign="acct2"))
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns if c["campaign_id"] == "acct2"))
        seen = await wa_ledger(b, standin)  # one send each: the 190 is not retried
        assert (seen.compared, seen.attempts, seen.wire) == (2, 2, 2)


async def test_ambiguous_timeout_is_never_resent_blindly(broker: Mosquitto, tmp_path: Path) -> None:
    late = Scenario(send_delay_s=0.8, statuses=((0.05, "sent", None), (0.1, "delivered", None)))
    silent = Scenario(send_delay_s=0.8, statuses=NO_HOOKS)
    async with (
        backend(broker.url) as b,
        wa_rig(
            broker.url,
            tmp_path,
            {"420601000030": late, "420601000031": silent},
            request_timeout_s=0.3,
            ambiguous_timeout_s=1.0,
        ) as (_app, standin),
    ):
        await b.send("send", send("t1", "late", "420601000030"))
        await b.send("send", send("t2", "silent", "420601000031", policy={"max_attempts": 1}))
        # the response never arrived; the webhooks carry biz_opaque_callback_data and resolve it
        await b.wait_for(lambda: b.statuses("wa", "late")[-1:] == ["delivered"], timeout=10)
        assert b.statuses("wa", "late") == ["initial", "in_progress", "sent", "delivered"]
        assert len([s for s in standin.sent if s.to == "420601000030"]) == 1  # sent once, never again
        # no webhook at all: after ambiguous_timeout_s the contact is retried — here attempts are spent
        await b.wait_for(lambda: b.final("wa", "silent"), timeout=10)
        assert b.statuses("wa", "silent") == ["initial", "in_progress", "error"]
        assert b.by_contact[("wa", "silent")][-1]["signal"]["kind"] == "ambiguous"
        # the wire ledger (SPEC §9): both requests were written and reached the stand-in before the client
        # gave up on the response — an ambiguous timeout is an attempt the peer did see, and none was resent
        seen = await wa_ledger(b, standin)
        assert (seen.compared, seen.attempts, seen.wire) == (2, 2, 2)


async def post(app_port: int, body: bytes, sig: str | None, **headers: str) -> aiohttp.ClientResponse:
    hdrs = {"Content-Type": "application/json", **headers}
    if sig is not None:
        hdrs["X-Hub-Signature-256"] = sig
    url = f"http://127.0.0.1:{app_port}/webhooks/whatsapp"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=hdrs) as r:
        await r.read()
        return r


async def test_webhook_security_and_bad_input(broker: Mosquitto, tmp_path: Path) -> None:
    quiet = Scenario(statuses=NO_HOOKS)
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, {"420601000040": quiet}) as (app, standin):
        await b.send("send", send("q1", "k", "420601000040"))
        await b.wait_for(lambda: len(standin.sent) == 1 and b.statuses("wa", "k")[-1:] == ["in_progress"])
        wamid = standin.sent[0].wamid
        # the gateway has the Cloud API's answer: the wamid is mapped to the contact (in its store)
        async with asyncio.timeout(10):
            while await app.store.read(lambda t: t.lookup_wamid(wamid)) is None:
                await asyncio.sleep(0.02)
        body = json.dumps(
            standin.envelope(
                [
                    {
                        "statuses": [
                            {
                                "id": wamid,
                                "status": "delivered",
                                "timestamp": "1700000000",
                                "recipient_id": "420601000040",
                            }
                        ]
                    }
                ]
            )
        ).encode()
        port = app.http_port
        assert port is not None
        assert (await post(port, body, None)).status == 401
        assert (await post(port, body, "sha256=" + "0" * 64)).status == 401
        assert (await post(port, body, signature(b"not-the-secret", body))).status == 401
        assert (await post(port, body, signature(SECRET.encode(), body + b" "))).status == 401
        assert (await post(port, b"{not json", signature(SECRET.encode(), b"{not json"))).status == 400
        big = b'{"object":"x","pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
        assert (await post(port, big, signature(SECRET.encode(), big))).status == 413
        assert (await post(port, body, signature(SECRET.encode(), body))).status == 200
        await b.wait_for(lambda: b.statuses("wa", "k")[-1:] == ["delivered"])
        # nothing of the refused ones was processed: the good POST's event, after them, is the marker
        assert b.statuses("wa", "k") == ["initial", "in_progress", "delivered"]
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{port}/webhooks/whatsapp"
            q = {"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "1158201444"}
            async with http.get(base, params=q) as r:
                assert r.status == 200 and await r.text() == "1158201444"
                assert r.headers["Content-Type"].startswith("text/plain")
            async with http.get(base, params={**q, "hub.verify_token": "wrong"}) as r:
                assert r.status == 403
        seen = await wa_ledger(b, standin)  # the forged and bad webhooks sent nothing more
        assert (seen.compared, seen.attempts, seen.wire) == (1, 1, 1)


async def test_duplicates_out_of_order_and_a_1000_status_batch(broker: Mosquitto, tmp_path: Path) -> None:
    n = 250
    scenarios = {f"4206020{i:05d}": Scenario(statuses=NO_HOOKS) for i in range(n)}
    scenarios["420601000050"] = Scenario(duplicate=True)
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, scenarios) as (app, standin):
        await b.send("send", send("dup", "dup", "420601000050"))
        for i in range(n):
            await b.send("send", send(f"b{i}", f"b{i}", f"4206020{i:05d}", campaign="batch"))
        await b.wait_for(lambda: len(standin.sent) == n + 1 and b.final("wa", "dup"), timeout=20)
        assert b.statuses("wa", "dup") == ["initial", "in_progress", "sent", "delivered", "read"]
        await b.wait_for(lambda: all(b.statuses("batch", f"b{i}")[-1:] == ["in_progress"] for i in range(n)))
        statuses = []
        for s in standin.sent:
            if s.to.startswith("4206020"):  # out of order, and each read twice: 4 statuses per message
                statuses += [
                    {"id": s.wamid, "status": st, "timestamp": "1700000000", "recipient_id": s.to}
                    for st in ("read", "delivered", "sent", "read")
                ]
        assert len(statuses) == 1000
        body = json.dumps(standin.envelope([{"statuses": statuses}])).encode()
        assert app.http_port is not None
        assert (await post(app.http_port, body, signature(SECRET.encode(), body))).status == 200
        await b.wait_for(lambda: all(b.final("batch", f"b{i}") for i in range(n)))
        await settled(b, app, lambda: standin.outstanding == 0)
        assert all(b.statuses("batch", f"b{i}") == ["initial", "in_progress", "read"] for i in range(n))
        # Meta retrying a POST it thinks was not acknowledged: no second event
        assert (await post(app.http_port, body, signature(SECRET.encode(), body))).status == 200
        await settled(b, app)  # answered after its commit: whatever it committed is published and here
        assert sum(len(b.by_contact[("batch", f"b{i}")]) for i in range(n)) == 3 * n
        too_many = json.dumps(standin.envelope([{"statuses": statuses + statuses[:1]}])).encode()
        assert (await post(app.http_port, too_many, signature(SECRET.encode(), too_many))).status == 413
        seen = await wa_ledger(b, standin)  # the wire ledger (SPEC §9): one send per contact, never resent
        assert (seen.compared, seen.attempts, seen.wire) == (n + 1, n + 1, n + 1)


# real-world status payloads, grouped by the message id they carry (library fixtures reuse ids), posted in
# this order byte for byte; each group is one contact in `in_progress`, and yields these events
CORPUS_GROUPS: list[tuple[list[str], list[str]]] = [
    (
        [
            "Secreto31126__whatsapp-api-js__v25-status-sent-pmp-marketing-bsuid.json",
            "Secreto31126__whatsapp-api-js__v25-status-read-no-pricing.json",
        ],
        ["sent", "read"],
    ),
    (
        [
            "david-lev__pywa__status-sent-cbp-service.json",
            "david-lev__pywa__status-sent-biz-opaque-callback-data.json",
            "david-lev__pywa__status-failed-130472-experiment.json",
            "david-lev__pywa__status-played.json",
            "david-lev__pywa__status-read.json",
        ],
        ["sent", "delivery_failed", "read"],
    ),
    (["david-lev__pywa__status-read-group-recipient.json"], ["read"]),
    (
        [
            "nyaruka__courier__status-failed-131014-cbp-int-expiration.json",
            "nyaruka__courier__status-deleted-legacy-value.json",
            "nyaruka__courier__status-unknown-value-in_orbit.json",
        ],
        ["delivery_failed"],
    ),
    (
        [
            "restfb__restfb__status-delivered-bsuid-no-recipient_id-pmp.json",
            "restfb__restfb__status-read-group-bsuid.json",
        ],
        ["delivered", "read"],
    ),
    (["restfb__restfb__status-failed-131026-receiver-incapable.json"], ["sending_failed"]),
    (
        [
            "shaikhmudassir__Django-CRM__captured-status-sent-cbp.json",
            "shaikhmudassir__Django-CRM__captured-status-read-1s-later-no-delivered.json",
        ],
        ["sent", "read"],
    ),
]
CORPUS_INBOUND = [  # customers' messages: published on evt/inbound, no contact event (issue 22)
    "david-lev__pywa__incoming-text-message.json",
    "nyaruka__courier__incoming-two-identical-messages-one-post.json",
]


def first_status(raw: bytes) -> dict[str, Any]:
    status: dict[str, Any] = json.loads(raw)["entry"][0]["changes"][0]["value"]["statuses"][0]
    return status


async def test_real_world_webhook_payloads(broker: Mosquitto, tmp_path: Path) -> None:
    folder = CORPORA / "whatsapp"
    if not folder.is_dir():
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    groups = [([(folder / n).read_bytes() for n in names], expected) for names, expected in CORPUS_GROUPS]
    numbers = [f"4206030{i:05d}" for i in range(len(groups))]
    scenarios = {
        numbers[i]: Scenario(statuses=NO_HOOKS, wamid=first_status(raws[0])["id"]) for i, (raws, _) in enumerate(groups)
    }
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, scenarios) as (app, standin):
        for i in range(len(groups)):
            await b.send("send", send(f"c{i}", f"c{i}", numbers[i], campaign=f"corp{i}"))
        await b.wait_for(
            lambda: (
                len(standin.sent) == len(groups)
                and all(b.statuses(f"corp{i}", f"c{i}")[-1:] == ["in_progress"] for i in range(len(groups)))
            )
        )
        assert app.http_port is not None
        for raws, _ in groups:
            for raw in raws:  # byte for byte, signed as Meta signs
                assert (await post(app.http_port, raw, signature(SECRET.encode(), raw))).status == 200
        for name in CORPUS_INBOUND:
            raw = (folder / name).read_bytes()
            assert (await post(app.http_port, raw, signature(SECRET.encode(), raw))).status == 200, name
        want = {i: ["initial", "in_progress", *expected] for i, (_, expected) in enumerate(groups)}
        await b.wait_for(lambda: all(b.statuses(f"corp{i}", f"c{i}") == w for i, w in want.items()))
        real = b.by_contact[("corp5", "c5")][-1]  # the real 131026 capture
        assert real["signal"]["wa_error_code"] == 131026
        assert real["signal"]["wa_message_id"] == first_status(groups[5][0][0])["id"]
        assert real["signal"]["status_timestamp"] == "1698231447"
        # value-level errors (code 0: account-level) are accepted and pause the WhatsApp campaigns
        errors = (folder / "nyaruka__courier__value-level-errors-code-0.json").read_bytes()
        assert (await post(app.http_port, errors, signature(SECRET.encode(), errors))).status == 200
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns))
        seen = await wa_ledger(b, standin)  # the wire ledger (SPEC §9): one send per group's contact
        assert (seen.compared, seen.attempts, seen.wire) == (len(groups), len(groups), len(groups))
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.http_port}/metrics") as r:
            text = await r.text()
        assert 'telgate_whatsapp_webhooks_total{result="unknown_status"} 2.0' in text
        # the two inbound files: two texts, and the second identical message of one POST a duplicate
        assert 'telgate_whatsapp_inbound_messages_total{type="text"} 2.0' in text
        assert 'telgate_whatsapp_inbound_messages_total{type="duplicate"} 1.0' in text
        await b.wait_for(lambda: len(b.inbound) == 2)


async def test_pair_limit_one_send_per_number_per_6_s(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path) as (_app, standin):
        for i in range(2):
            await b.send("send", send(f"p{i}", f"p{i}", "420601000060"))
        await b.send("send", send("other", "other", "420601000061"))
        await b.wait_for(
            lambda: (
                len({s.to for s in standin.sent}) == 2 and len([s for s in standin.sent if s.to == "420601000060"]) >= 2
            ),
            timeout=30,
        )
        to_pair = sorted(s.at for s in standin.sent if s.to == "420601000060")[:2]
        other = next(s.at for s in standin.sent if s.to == "420601000061")
        assert to_pair[1] - to_pair[0] >= 5.95
        assert other - to_pair[0] < 1.0  # another number is not held back
        # the wire ledger (SPEC §9): the held-back contact was sent once, when its turn came — not twice
        seen = await wa_ledger(b, standin)
        assert (seen.compared, seen.attempts, seen.wire) == (3, 3, 3)


async def test_gateway_killed_between_send_and_webhooks(broker: Mosquitto, tmp_path: Path) -> None:
    import os
    import signal as sig
    import subprocess
    import sys

    from tests.support.broker import free_port
    from tests.support.wa import TOKEN, VERIFY
    from whatsapp.standin import StandIn

    root = Path(__file__).resolve().parents[2]
    port = free_port()
    late = Scenario(statuses=((1.5, "sent", None), (1.6, "delivered", None), (1.7, "read", None)))
    async with StandIn(
        access_token=TOKEN,
        app_secret=SECRET,
        webhook_url=f"http://127.0.0.1:{port}/webhooks/whatsapp",
        scenarios={"420601000070": late},
        retry_delays_s=(0.5, 1.0, 2.0, 4.0, 8.0),
    ) as standin:
        cfg = tmp_path / "telgate.toml"
        cfg.write_text(
            f'[gateway]\nid = "gw-wa"\ndata_dir = "{tmp_path / "var"}"\n[bus]\nurl = "{broker.url}"\n'
            f'client_id = "telgate-wa"\n[http]\nlisten = "127.0.0.1:{port}"\n'
            f'[whatsapp]\napi_base = "{standin.api_base}"\nphone_number_id = "{standin.phone_number_id}"\n'
            f'access_token = "{TOKEN}"\napp_secret = "{SECRET}"\nverify_token = "{VERIFY}"\n{store_toml()}'
        )
        log = (tmp_path / "gw.log").open("ab")

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "tests.support.run_scripted", str(cfg), "0.01"],
                cwd=root,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(root)},
            )

        proc = start()
        try:
            async with backend(broker.url) as b:
                await b.wait_for(lambda: b.presence.get("gw-wa") == "online", timeout=20)
                await b.send("send", send("k1", "k", "420601000070"))
                await b.wait_for(lambda: len(standin.sent) == 1 and b.statuses("wa", "k")[-1:] == ["in_progress"])
                proc.send_signal(sig.SIGKILL)  # accepted by Meta; the webhooks are still to come
                proc.wait(10)
                # Meta's first deliveries fail: nobody answers
                await b.wait_for(lambda: standin.refused_deliveries >= 1, timeout=10)
                b.presence.clear()
                proc = start()
                await b.wait_for(lambda: b.final("wa", "k"), timeout=30)
                # kept: repeats of rows acknowledged before the kill may still be on their way, and this
                # gateway is another process (no outbox to look at, tests/support/settle.py) and the contact
                # is final (no later event of its own to wait for as a marker)
                await b.wait_for(lambda: standin.outstanding == 0, timeout=30)
                await asyncio.sleep(0.5)
                # rows the broker acknowledged just before the kill may come again: with the same event_id
                events = b.unique("wa", "k")
                # Meta retries each undelivered webhook on its own schedule, so the one that reaches the
                # restarted gateway first may be `read` (SPEC §5.2: "read may come without delivered");
                # whatever came later and lower is a duplicate. Statuses only move up, without a gap.
                statuses = [e["status"] for e in events]
                assert statuses[:2] == ["initial", "in_progress"] and statuses[-1] == "read", statuses
                assert statuses[2:-1] in ([], ["sent"], ["delivered"], ["sent", "delivered"]), statuses
                assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
                assert events[-1]["signal"]["wa_message_id"] == standin.sent[0].wamid
                received = len(b.by_contact[("wa", "k")])
                # Meta repeating a POST the gateway did acknowledge: nothing new
                wamid = standin.sent[0].wamid
                again = json.dumps(
                    standin.envelope(
                        [
                            {
                                "statuses": [
                                    {
                                        "id": wamid,
                                        "status": "read",
                                        "timestamp": "1700000000",
                                        "recipient_id": "420601000070",
                                    }
                                ]
                            }
                        ]
                    )
                ).encode()
                assert await standin.post_webhook(again) == 200
                await asyncio.sleep(0.3)  # kept, as above: another process, a final contact
                assert len(b.by_contact[("wa", "k")]) == received
                # the wire ledger (SPEC §9): the restarted gateway did not send the template again
                seen = await wa_ledger(b, standin)
                assert (seen.compared, seen.attempts, seen.wire) == (1, 1, 1)
        finally:
            if proc.poll() is None:
                proc.send_signal(sig.SIGTERM)
                assert proc.wait(20) == 0
