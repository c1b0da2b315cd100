"""`telgate import` as a user runs it (issue 11, the client side): the real CLI in its own process against
a real Mosquitto (the shipped queue limits) and an in-process gateway with scripted ports. Every campaign
is created as a draft first, so nothing is dialled or sent: what is checked is the intake — the counts
the command prints and the contacts in the gateway's store.

Also the command window (gateway/tools/submit.py) on its own: results on MQTT 5 Response Topics and on 3.1.1's
shared result topic, a command published again when its first copy reached no gateway, and the shipped
broker configuration (users and ACL) letting a backend get its replies.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from gateway.contract.wire import MAX_BULK_PAYLOAD_BYTES, CommandResult, RefusedContact
from gateway.domain.statuses import Channel
from gateway.service.app import App
from gateway.tools.importer import Chunk, Report, Row, plan, read_contacts
from gateway.tools.submit import BusTarget, CommandWindow, NoResult, encode
from tests.support.broker import Mosquitto, shipped_broker
from tests.support.harness import gateway, settings_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


async def telgate(*args: str, timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m gateway ARGS` in its own process, as a user types it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120", **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def create(campaign: str) -> dict[str, str]:
    return {"command_id": f"{campaign}-create", "campaign_id": campaign, "action": "create"}


def dial(command_id: str, contact_id: str, phone: str = "+420601000001") -> dict[str, str]:
    return {"command_id": command_id, "campaign_id": "w", "contact_id": contact_id, "phone": phone}


async def draft(url: str, campaign: str) -> None:
    """The campaign exists and is not started: its contacts wait, nothing is dialled."""
    async with CommandWindow(BusTarget(url=url)) as window:
        result = await window.call(
            "campaign", {"command_id": f"{campaign}-create", "campaign_id": campaign, "action": "create"}
        )
        assert result.accepted, result


async def counts(app: App, campaign: str) -> dict[str, int]:
    return await app.store.run(lambda txn: txn.counts(campaign))


def big_csv(path: Path, rows: int, bad_every: int, duplicates: list[int]) -> dict[str, int]:
    """`rows` data lines; every `bad_every`-th line has a number nobody can dial; the lines at the positions
    in `duplicates` repeat the contact_id of an earlier line (with a good number). Returns what to expect."""
    lines = ["contact_id,phone,crm_id,name"]
    bad = 0
    dup_at = set(duplicates)
    for i in range(rows):
        if i in dup_at:
            lines.append(f"c-{i - 500:06d},+420601{i:06d},A-{i},Repeat {i}")
            continue
        if i % bad_every == bad_every - 1:
            phone = random.Random(i).choice(["12", "+420 60", "not a number", ""])
            bad += 1
        else:
            phone = f"+420601{i:06d}" if i % 2 else f"601 {i // 1000:03d} {i % 1000:03d}"
        name = f'"Novák, Jan {i}"' if i % 7 == 0 else f"Jan {i}"
        lines.append(f"c-{i:06d},{phone},A-{i},{name}")
    path.write_text("\n".join(lines) + "\n")
    return {"accepted": rows - len(duplicates), "invalid": bad, "busy": len(duplicates)}


async def test_a_50000_line_csv_imports_once_with_its_refusals_counted(broker: Mosquitto, tmp_path: Path) -> None:
    csv_file = tmp_path / "contacts.csv"
    duplicates = [1000 + 4303 * k for k in range(10)]
    # neither the repeat nor the line it repeats has a bad number (that contact would be final: contact_final)
    assert all(d % 33 != 32 and (d - 500) % 33 != 32 for d in duplicates)
    expect = big_csv(csv_file, 50_000, 33, duplicates)
    assert expect == {"accepted": 49_990, "invalid": 1_515, "busy": 10}
    async with gateway(settings_for(broker.url, tmp_path, metrics={"campaign_label": False})) as app:
        await draft(broker.url, "spring")
        code, out, err = await telgate(
            "import", str(csv_file), "--campaign", "spring", "--broker", broker.url, "--json"
        )
        assert code == 0, err[-3000:]
        first = json.loads(out.strip().splitlines()[-1])
        assert first["contacts"] == 50_000 and first["commands"] == 50
        assert first["accepted"] == 49_990 and first["invalid"] == 1_515
        assert first["refused"] == {"contact_busy": 10} and first["already_imported"] == 0
        assert first["unconfirmed"] == [] and first["not_sent"] == [] and first["ok"]
        # each refusal names the line of the second occurrence in the file (line 1 is the header)
        assert sorted(r["line"] for r in first["refusals"]) == [d + 2 for d in duplicates]
        assert {r["contact_id"] for r in first["refusals"]} == {f"c-{d - 500:06d}" for d in duplicates}
        assert sorted(r["first_line"] for r in first["refusals"]) == [d - 500 + 2 for d in duplicates]
        stored = await counts(app, "spring")
        assert stored == {"initial": 49_990 - 1_515, "invalid_record": 1_515}, stored
        first_meta = await app.store.run(lambda txn: txn.get_contact(("spring", "c-000007")))
        assert first_meta is not None and first_meta.meta == {"crm_id": "A-7", "name": "Novák, Jan 7"}

        # the same file again: the same command ids, answered as duplicates; nothing is created twice
        code, out, err = await telgate("import", str(csv_file), "--campaign", "spring", "--broker", broker.url)
        assert code == 0, err[-3000:]
        assert "accepted                  0" in out and "refused                   0" in out, out
        assert "already imported     49,990" in out and "refused then: contact_busy 10" in out, out
        assert await counts(app, "spring") == stored
        assert "importing" in err  # the progress bar, on stderr


async def test_a_malformed_file_is_refused_whole_with_its_line(broker: Mosquitto, tmp_path: Path) -> None:
    no_phone = tmp_path / "no_phone.csv"
    no_phone.write_text("contact_id,telephone,crm\nc-1,+420601000001,A\n")
    short_line = tmp_path / "short.csv"
    short_line.write_text(
        "contact_id,phone,crm\n" + "".join(f"c-{i},+42060100{i:04d},A-{i}\n" for i in range(900)) + "c-x,+420601\n"
    )
    bad_id = tmp_path / "bad_id.jsonl"
    bad_id.write_text('{"contact_id": "c-1", "phone": "+420601000001"}\n\n{"contact_id": "c/2", "phone": "1"}\n')
    number_phone = tmp_path / "number.jsonl"
    number_phone.write_text('{"contact_id": "c-1", "phone": 420601000001}\n')
    not_a_number = tmp_path / "nan.jsonl"  # Python's json reads NaN; the gateway refuses it (not JSON)
    not_a_number.write_text(
        '{"contact_id": "c-1", "phone": "+420601000001"}\n'
        '{"contact_id": "c-2", "phone": "+420601000002", "score": NaN}\n'
    )
    async with gateway(settings_for(broker.url, tmp_path)) as app:
        await draft(broker.url, "autumn")
        cases = [
            (no_phone, "no_phone.csv: line 1, column phone: the header has no `phone` column"),
            (short_line, "short.csv: line 902: 2 fields, the header has 3"),
            (bad_id, "bad_id.jsonl: line 3, field contact_id: String should match pattern"),
            (number_phone, "number.jsonl: line 1, field phone: must be a string"),
            (not_a_number, "nan.jsonl: line 2: not JSON: NaN is not a JSON value"),
        ]
        for path, message in cases:
            code, out, err = await telgate("import", str(path), "--campaign", "autumn", "--broker", broker.url)
            assert code == 1, (path, out, err)
            assert message in err and "nothing was sent" in err, err
            assert out == ""
        assert await counts(app, "autumn") == {}


async def test_json_lines_with_large_meta_are_split_under_1_mib(broker: Mosquitto, tmp_path: Path) -> None:
    path = tmp_path / "contacts.ndjson"
    lines = []
    for i in range(1_200):
        note = "x" * 3_000
        lines.append(
            json.dumps({"contact_id": f"k{i}", "phone": f"+420602{i:06d}", "meta": {"note": note}, "tier": i % 3})
        )
    lines.insert(10, "")  # a blank line is skipped
    path.write_text("\n".join(lines) + "\n")
    _raw, rows = read_contacts(path)
    chunks = plan(rows, {"campaign_id": "notes"}, "import:test")
    assert len(chunks) == 4 and sum(len(c.rows) for c in chunks) == 1_200
    first = len(chunks[0].rows)
    assert 300 < first < 1_000 and chunks[0].lines == f"lines 1-{first + 1}"  # and the blank line 11
    async with gateway(settings_for(broker.url, tmp_path)) as app:
        await draft(broker.url, "notes")
        code, out, err = await telgate("import", str(path), "--campaign", "notes", "--broker", broker.url, "--json")
        assert code == 0, err[-3000:]
        report = json.loads(out)
        assert report["commands"] == 4 and report["accepted"] == 1_200 and report["refused"] == {}
        assert await counts(app, "notes") == {"initial": 1_200}
        contact = await app.store.run(lambda txn: txn.get_contact(("notes", "k500")))
        assert contact is not None and contact.meta == {"note": "x" * 3_000, "tier": 2}


def test_bulks_stay_within_the_limits() -> None:
    meta = {"n": "é" * 1_300}
    rows = [Row(i + 2, i + 2, {"contact_id": f"k{i}", "phone": "+420601000000", "meta": meta}) for i in range(3_000)]
    chunks = plan(rows, {"campaign_id": "c", "template": {"name": "t", "language": "cs"}}, "import:x")
    for chunk in chunks:
        body = {"campaign_id": "c", "template": {"name": "t", "language": "cs"}, "command_id": chunk.command_id(20)}
        size = len(encode({**body, "contacts": [r.entry for r in chunk.rows]}))
        assert size <= MAX_BULK_PAYLOAD_BYTES and len(chunk.rows) <= 1_000
        if chunk is not chunks[-1]:
            assert size > MAX_BULK_PAYLOAD_BYTES - 3_000  # full, not timid
    assert [r for c in chunks for r in c.rows] == rows
    small = [Row(i, i, {"contact_id": f"k{i}", "phone": "1"}) for i in range(2_001)]
    assert [len(c.rows) for c in plan(small, {"campaign_id": "c"}, "import:x")] == [1_000, 1_000, 1]


async def test_whatsapp_import_needs_a_template_and_recovers_from_a_refused_run(
    broker: Mosquitto, tmp_path: Path
) -> None:
    path = tmp_path / "wa.csv"
    path.write_text("phone;contact_id;city\n" + "".join(f"+420 702 {i:06d};w{i};Brno\n" for i in range(250)))
    code, _out, err = await telgate("import", str(path), "--campaign", "notices", "--channel", "whatsapp")
    assert code == 2 and "--template" in err, err
    code, _out, err = await telgate(
        "import", str(path), "--campaign", "notices", "--channel", "whatsapp", "--template", "reminder"
    )
    assert code == 2 and "--language" in err, err
    args = ("import", str(path), "--campaign", "notices", "--channel", "whatsapp", "--template", "reminder")
    args += ("--language", "cs", "--broker", broker.url)
    settings = settings_for(broker.url, tmp_path)
    # a gateway without WhatsApp refuses each bulk as a whole (channel_disabled), and keeps that answer
    async with gateway(settings, channels=(Channel.VOICE,)) as app:
        await draft(broker.url, "notices")
        code, out, err = await telgate(*args)
        assert code == 1, (out, err[-3000:])
        assert "refused                 250   channel_disabled 250" in out, out
        assert "REFUSED as a whole: bulk 1 (lines 2-251): channel_disabled (kind): the whatsapp channel" in out, out
        assert await counts(app, "notices") == {}
    # with WhatsApp on, the same file is asked again under the bulk's next id (the first one is answered
    # with the stored refusal); a third run finds that one answered and imports nothing
    async with gateway(settings) as app:
        code, out, err = await telgate(*args, "--json")
        assert code == 0, err[-3000:]
        report = json.loads(out)
        assert report["accepted"] == 250 and report["channel"] == "whatsapp"
        code, out, err = await telgate(*args, "--json")
        assert code == 0, err[-3000:]
        again = json.loads(out)
        assert again["accepted"] == 0 and again["already_imported"] == 250 and again["refused"] == {}
        assert await counts(app, "notices") == {"initial": 250}
        contact = await app.store.run(lambda txn: txn.get_contact(("notices", "w7")))
        assert contact is not None and contact.channel is Channel.WHATSAPP
        assert contact.template is not None and contact.template["name"] == "reminder"
        assert contact.meta == {"city": "Brno"}
        # the same contacts as voice: a different import, refused contact by contact (they exist)
        code, out, err = await telgate("import", str(path), "--campaign", "notices", "--broker", broker.url, "--json")
        assert code == 0, err[-3000:]
        assert json.loads(out)["refused"] == {"contact_busy": 250}


async def test_an_import_the_gateway_does_not_answer_names_its_unconfirmed_lines(
    broker: Mosquitto, tmp_path: Path
) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text("contact_id,phone\n" + "".join(f"c{i},+420601{i:06d}\n" for i in range(2_500)))
    code, out, err = await telgate(
        "import", str(path), "--campaign", "lost", "--broker", broker.url,
        "--window", "2", "--retry-after", "0.3", "--give-up-after", "1.2",
    )  # fmt: skip
    assert code == 1, (out, err)
    assert "NOT CONFIRMED: 2 bulk command(s)" in out, out
    assert "bulk 1 (lines 2-1001): " in out and "bulk 2 (lines 1002-2001): " in out, out
    assert "published 4 time(s)" in out or "published 5 time(s)" in out, out
    assert "NOT SENT: 1 bulk command(s), lines 2002-2501" in out, out
    assert "Run the same command again" in out


async def test_the_window_gets_results_on_mqtt_5_and_3_1_1_and_publishes_again(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # published before any gateway is there: the broker drops it (no subscriber), and so its first copy 0.3 s
    # later; a copy after the gateway started lands
    async with CommandWindow(BusTarget(url=broker.url), retry_after_s=0.3, give_up_after_s=20) as window:
        early = await window.submit("campaign", {"command_id": "k-early", "campaign_id": "w", "action": "create"})
        async with asyncio.timeout(10):
            while window.republished < 1:
                await asyncio.sleep(0.02)
        async with gateway(settings_for(broker.url, tmp_path)):
            result = await early
            assert result.accepted and result.command_id == "k-early" and window.republished >= 1
            for protocol in (5, 4):
                async with CommandWindow(BusTarget(url=broker.url, protocol=protocol), size=3) as w:
                    futures = [
                        await w.submit(
                            "dial",
                            {
                                "command_id": f"d{protocol}-{i}",
                                "campaign_id": "w",
                                "contact_id": f"k{protocol}-{i}",
                                "phone": "+420601000001",
                            },
                        )
                        for i in range(10)
                    ]
                    assert w.outstanding <= 3
                    results = await asyncio.gather(*futures)
                    assert [r.command_id for r in results] == [f"d{protocol}-{i}" for i in range(10)]
                    assert all(r.accepted and not r.duplicate for r in results)
                    again = await w.call(
                        "dial",
                        {"command_id": f"d{protocol}-0", "campaign_id": "w", "contact_id": "other", "phone": "1"},
                    )
                    assert again.duplicate and again.contact_id == f"k{protocol}-0"
    async with CommandWindow(BusTarget(url=broker.url), retry_after_s=0.2, give_up_after_s=0.5) as window:
        with pytest.raises(NoResult, match="published 3 time"):
            await window.call("campaign", {"command_id": "k-nobody", "campaign_id": "w", "action": "create"})


@pytest.mark.parametrize("shared_group", ["", "telgate"])
async def test_the_window_publishes_again_after_the_broker_comes_back(
    broker: Mosquitto, tmp_path: Path, shared_group: str
) -> None:
    """A command submitted while the broker is down waits in the window and goes out on the reconnect.

    With a plain subscription the broker (stopped cleanly) keeps the gateway's session and queues the
    command for it even when the window is back first: the reconnect alone delivers it, long before the
    retry timer (30 s). With the default shared subscription Mosquitto 2.0 restores no `$share`
    subscription from its database: a command published after the restart and before the gateway
    subscribes again reaches nobody, and it is the window's retry (here 1 s) that delivers it."""
    settings = settings_for(broker.url, tmp_path, bus={"shared_group": shared_group})
    retry_after = 30.0 if not shared_group else 1.0
    async with gateway(settings) as app:
        async with CommandWindow(BusTarget(url=broker.url), retry_after_s=retry_after, give_up_after_s=20) as window:
            assert (await window.call("campaign", create("back"))).accepted
            broker.stop()
            async with asyncio.timeout(10):  # the window has seen the broker go: the command waits in it
                while window.connected:
                    await asyncio.sleep(0.02)
            future = await window.submit("dial", dial("back-1", "k1") | {"campaign_id": "back"})
            assert window.outstanding == 1
            broker.start()
            result = await asyncio.wait_for(future, 10)
            assert result.accepted and result.command_id == "back-1"
        assert await counts(app, "back") == {"initial": 1}


async def test_the_shipped_broker_configuration_delivers_replies_to_a_backend(tmp_path: Path) -> None:
    """deploy/mosquitto: the gateway (user telgate) may write the Response Topics a backend (user backend)
    reads, so a backend that follows the contract gets its results there."""
    broker = shipped_broker(tmp_path)
    broker.start()
    try:
        settings = settings_for(
            broker.url, tmp_path, bus={"username": "telgate", "password": broker.passwords["telgate"]}
        )
        async with gateway(settings) as app:
            target = BusTarget(
                url=broker.url, username="backend", password=broker.passwords["backend"], client_id="crm-1"
            )
            async with CommandWindow(target, give_up_after_s=10) as window:
                result = await window.call(
                    "campaign", {"command_id": "acl-1", "campaign_id": "acl", "action": "create"}
                )
                assert result.accepted
            # `telgate import` as the backend user, its password from the environment as docs/bus.md shows it
            path = tmp_path / "acl.csv"
            path.write_text("contact_id,phone\n" + "".join(f"a{i},+420601{i:06d}\n" for i in range(20)))
            (tmp_path / "backend-password").write_text(broker.passwords["backend"] + "\n")
            env = {"TELGATE_BUS__USERNAME": "backend", "TELGATE_BUS__PASSWORD_FILE": str(tmp_path / "backend-password")}
            args = ("import", str(path), "--campaign", "acl", "--broker", broker.url, "--give-up-after", "10")
            code, out, err = await telgate(*args, "--json", env=env)
            assert code == 0 and json.loads(out)["accepted"] == 20, (out, err[-2000:])
            assert await counts(app, "acl") == {"initial": 20}
    finally:
        broker.stop()


def test_counts_are_reported_by_reason() -> None:
    """The report's text, as docs/bus.md shows it."""
    rows = tuple(Row(i + 2, i + 2, {"contact_id": f"c{i}", "phone": "1"}) for i in range(3))
    chunk = Chunk(1, rows, "import:x")
    report = Report("f.csv", "c", "voice", contacts=3, commands=1)
    refused = [RefusedContact(contact_id="c2", code="contact_busy", field="contacts[2].contact_id", message="busy")]
    report.take(
        chunk,
        CommandResult(
            command_id="x", accepted=True, contacts_accepted=2, contacts_invalid=1, contacts_refused=refused,
            gateway_id="g", occurred_at="2026-01-01T00:00:00Z",
        ),  # type: ignore[arg-type]
    )  # fmt: skip
    text = "\n".join(report.text())
    assert "accepted                  2   (1 with an invalid number" in text
    assert "refused                   1   contact_busy 1" in text
    assert "line 4  contact_id c2  contact_busy: busy" in text
    assert report.ok and Counter(report.refused) == Counter({"contact_busy": 1})
