"""Commands in, events out, through a real Mosquitto (SPEC §3, §4, §5)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gateway.contract.wire import CampaignStatusEvent, CommandResult, ContactStatusEvent
from gateway.domain.statuses import Channel
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, gateway, scripted, scripted_ledger, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]

EVENT_KEYS = {
    "schema",
    "event_id",
    "sequence",
    "occurred_at",
    "gateway_id",
    "campaign_id",
    "contact_id",
    "channel",
    "status",
    "label",
    "previous_status",
    "final",
    "attempt",
    "max_attempts",
    "retry_at",
    "phone",
    "signal",
    "meta",
}


def dial(cid: str, contact: str, phone: str, campaign: str = "spring", **kw: Any) -> dict[str, Any]:
    return {"command_id": cid, "campaign_id": campaign, "contact_id": contact, "phone": phone, **kw}


def assert_in_order(b: Backend, campaign: str, contact: str) -> None:
    seqs = [e["sequence"] for e in b.by_contact[(campaign, contact)]]
    assert seqs == list(range(1, len(seqs) + 1)), seqs


async def test_voice_and_whatsapp_flows_with_spec_payloads(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        await b.send("dial", dial("d1", "ok", "+420601234560", meta={"crm_id": "A-17"}, profile="tovie"))
        await b.send("dial", dial("d2", "busy", "+420601234561", policy={"max_attempts": 2, "delays_s": [0.1]}))
        await b.send("dial", dial("d3", "bad", "not a number"))
        await b.send("dial", dial("d4", "nonum", "+420601234564"))
        await b.send(
            "send",
            {
                "command_id": "s1",
                "campaign_id": "wa",
                "contact_id": "w1",
                "phone": "601 234 560",
                "template": {"name": "reminder", "language": "cs", "components": []},
            },
        )
        done = [("spring", "ok"), ("spring", "busy"), ("spring", "bad"), ("spring", "nonum"), ("wa", "w1")]
        await b.wait_for(lambda: all(b.final(*k) for k in done))

        assert b.statuses("spring", "ok") == ["initial", "calling", "call_in_progress", "success"]
        assert b.statuses("spring", "busy") == [
            "initial",
            "calling",
            "retry_scheduled",
            "calling",
            "completed_without_answer",
        ]
        assert b.statuses("spring", "bad") == ["initial", "invalid_record"]
        assert b.statuses("spring", "nonum") == ["initial", "calling", "invalid_record"]
        assert b.statuses("wa", "w1") == ["initial", "in_progress", "sent", "delivered", "read"]
        for key in done:
            assert_in_order(b, *key)
        ok = b.by_contact[("spring", "ok")]
        assert all(set(e) == EVENT_KEYS for e in ok)
        assert ok[-1]["label"] == "Answered" and ok[-1]["final"] and ok[-1]["meta"] == {"crm_id": "A-17"}
        assert ok[0]["schema"] == "telgate.contact-status/1" and ok[0]["phone"] == "+420601234560"
        retry = b.by_contact[("spring", "busy")][2]
        assert retry["signal"]["sip_code"] == 486 and retry["signal"]["q850_cause"] == 17
        assert retry["retry_at"] and retry["attempt"] == 1 and retry["label"] == "Retry scheduled"
        assert b.by_contact[("spring", "busy")][3]["attempt"] == 2
        assert b.by_contact[("wa", "w1")][0]["phone"] == "+420601234560"
        assert b.by_contact[("wa", "w1")][2]["signal"]["wa_message_id"] == "wamid.w1.1"
        assert len({e["event_id"] for e in b.events}) == len(b.events)
        for e in b.events:  # every published payload is valid against the model that generates the schema
            ContactStatusEvent.model_validate(e)
            assert uuid.UUID(e["event_id"]).version == 7
        for r in b.results:
            CommandResult.model_validate(r)
        for c in b.campaigns:
            CampaignStatusEvent.model_validate(c)
        assert {r["command_id"] for r in b.results if r["accepted"]} == {"d1", "d2", "d3", "d4", "s1"}
        assert any(c["campaign_id"] == "spring" and c["status"] == "in_progress" for c in b.campaigns)
        # the wire ledger (SPEC §9): ok 1 + busy 2 (a retry) + nonum 1 (dialled, 404) dials; `bad` never
        # reached the port (invalid_record before a dial); one WhatsApp send
        voice = await scripted_ledger(b, app, Channel.VOICE)
        assert (voice.compared, voice.attempts, voice.wire) == (4, 4, 4)
        assert ("spring", "bad") not in {(c, k) for c, k, _ in scripted(app, Channel.VOICE).started}
        wa = await scripted_ledger(b, app, Channel.WHATSAPP)
        assert (wa.compared, wa.attempts, wa.wire) == (1, 1, 1)


async def test_idempotent_command_and_response_topic(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        for _ in range(2):
            await b.send(
                "dial", dial("same", "k", "+420601234560"), response_topic="backend/replies", correlation=b"corr-1"
            )
        await b.wait_for(lambda: b.final("spring", "k") and len(b.responses) == 2)
        answers = [r for r in b.results if r["command_id"] == "same"]
        assert [a["accepted"] for a in answers] == [True, True]
        assert [a["duplicate"] for a in answers] == [False, True]
        assert all(corr == b"corr-1" for corr, _ in b.responses)
        assert b.statuses("spring", "k") == ["initial", "calling", "call_in_progress", "success"]
        await b.send("dial", dial("again", "k", "+420601234560"))
        await b.wait_for(lambda: b.result("again") is not None)
        assert b.result("again")["error"]["code"] == "contact_final"  # type: ignore[index]
        seen = await scripted_ledger(b, app, Channel.VOICE)  # the duplicate and the late dial dialled nothing
        assert seen.attempts == 1 and seen.wire == 1


async def test_cancel_remove_blacklist_busy(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        await b.send("dial", dial("r1", "ringing", "+420601234566"))  # rings until cancelled
        await b.wait_for(lambda: "calling" in b.statuses("spring", "ringing"))
        await b.send("dial", dial("r2", "ringing", "+420601234566"))
        await b.send("remove", {"command_id": "rm1", "campaign_id": "spring", "contact_id": "ringing"})
        await b.send("cancel", {"command_id": "x1", "campaign_id": "spring", "contact_id": "ringing"})
        await b.wait_for(lambda: b.final("spring", "ringing") and b.result("rm1") is not None)
        assert b.result("r2")["error"] == {
            "code": "contact_busy",
            "field": "contact_id",  # type: ignore[index]
            "message": "dial: contact_busy",
        }
        assert b.result("rm1")["error"]["code"] == "contact_in_flight"  # type: ignore[index]
        assert b.statuses("spring", "ringing") == ["initial", "calling", "canceled_by_admin"]

        await b.send("blacklist", {"command_id": "bl1", "phone": "601 234 560", "action": "add"})
        await b.wait_for(lambda: b.result("bl1") is not None)
        await b.send("dial", dial("b1", "listed", "+420601234560"))
        await b.wait_for(lambda: b.final("spring", "listed"))
        assert b.statuses("spring", "listed") == ["initial", "blacklisted"]
        await b.send("blacklist", {"command_id": "bl2", "phone": "+420601234560", "action": "remove"})
        await b.send("dial", dial("b2", "unlisted", "+420601234560"))
        await b.wait_for(lambda: b.final("spring", "unlisted"))
        assert b.statuses("spring", "unlisted")[-1] == "success"
        # the wire ledger (SPEC §9): `ringing` dialled once (the second dial was refused as busy), the
        # blacklisted contact never, the one dialled after the number left the blacklist once
        seen = await scripted_ledger(b, app, Channel.VOICE)
        assert (seen.compared, seen.attempts, seen.wire) == (3, 2, 2)
        dialled = Counter((c, k) for c, k, _ in scripted(app, Channel.VOICE).started)
        assert dialled == {("spring", "ringing"): 1, ("spring", "unlisted"): 1}
        assert dialled[("spring", "listed")] == 0


async def test_campaign_lifecycle_pause_resume_finish(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        camp = {"campaign_id": "autumn"}
        await b.send("campaign", {"command_id": "cc", **camp, "action": "create", "budget": {"max_contacts": 2}})
        await b.send("dial", dial("a1", "k1", "+420601234560", campaign="autumn"))
        await b.wait_for(lambda: b.result("a1") is not None)
        assert b.statuses("autumn", "k1") == ["initial"]  # a draft campaign dials nothing
        await b.send("campaign", {"command_id": "cs", **camp, "action": "start"})
        await b.wait_for(lambda: b.final("autumn", "k1"))
        await b.send("campaign", {"command_id": "cp", **camp, "action": "pause"})
        await b.wait_for(lambda: b.result("cp") is not None)
        for i in (2, 3):
            await b.send("dial", dial(f"a{i}", f"k{i}", "+420601234560", campaign="autumn"))
        await b.wait_for(lambda: b.result("a3") is not None)
        assert b.statuses("autumn", "k2") == ["initial"]  # paused: nothing new is dialled
        await b.send("campaign", {"command_id": "cr", **camp, "action": "resume"})
        await b.wait_for(lambda: b.final("autumn", "k2") and b.final("autumn", "k3"))
        assert b.statuses("autumn", "k3")[-1] == "plan_limit_exceeded"  # max_contacts = 2
        await b.send("dial", dial("a4", "k4", "+420601234566", campaign="autumn", mode="preview"))
        await b.wait_for(lambda: b.result("a4") is not None)
        await b.send("campaign", {"command_id": "cf", **camp, "action": "finish"})
        await b.wait_for(lambda: b.final("autumn", "k4"))
        assert b.statuses("autumn", "k4") == ["initial", "canceled_by_admin"]
        statuses = [c["status"] for c in b.campaigns if c["campaign_id"] == "autumn"]
        assert statuses == ["draft", "in_progress", "paused", "in_progress", "finished"]
        assert b.campaigns[-1]["counts"]["success"] == 2
        await b.send("campaign", {"command_id": "cr2", **camp, "action": "resume"})
        await b.wait_for(lambda: b.result("cr2") is not None)
        assert b.result("cr2")["error"]["code"] == "campaign_finished"  # type: ignore[index]
        # the wire ledger (SPEC §9): k1 and k2 dialled once each; k3 (over max_contacts) and k4 (a preview
        # cancelled by the finish) never — a draft, a paused campaign and the budget dial nothing
        seen = await scripted_ledger(b, app, Channel.VOICE)
        assert (seen.compared, seen.attempts, seen.wire) == (4, 2, 2)
        dialled = Counter(k for _, k, _ in scripted(app, Channel.VOICE).started)
        assert dialled == {"k1": 1, "k2": 1} and dialled["k3"] == dialled["k4"] == 0


async def test_operator_preview_flow(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        await b.send("dial", dial("p1", "pv", "+420601234560", mode="preview", bcw_s=0.3, wrapup=True))
        op = {"campaign_id": "spring", "contact_id": "pv"}
        await b.send("operator", {"command_id": "o1", **op, "signal": "assigned", "operator_id": "op-7"})
        await b.send("operator", {"command_id": "o2", **op, "signal": "accepted"})
        await b.wait_for(lambda: b.statuses("spring", "pv")[-1:] == ["acw"])
        await b.send("operator", {"command_id": "o3", **op, "signal": "wrapup_done"})
        await b.wait_for(lambda: b.final("spring", "pv"))
        assert b.statuses("spring", "pv") == [
            "initial",
            "operator_assigned",
            "bcw",
            "calling",
            "call_in_progress",
            "acw",
            "success",
        ]
        await b.send("operator", {"command_id": "o4", **op, "signal": "connected"})
        await b.wait_for(lambda: b.result("o4") is not None)
        assert b.result("o4")["error"]["code"] == "illegal_transition"  # type: ignore[index]
        seen = await scripted_ledger(b, app, Channel.VOICE)  # dialled once, after bcw
        assert seen.attempts == 1 and seen.wire == 1


async def test_channel_disabled_when_not_configured(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        backend(broker.url) as b,
        gateway(settings_for(broker.url, tmp_path), channels=(Channel.VOICE,)) as app,
    ):
        await b.send(
            "send",
            {
                "command_id": "s1",
                "campaign_id": "wa",
                "contact_id": "w1",
                "phone": "+420601234560",
                "template": {"name": "t", "language": "en"},
            },
        )
        await b.wait_for(lambda: b.result("s1") is not None)
        assert b.result("s1")["error"]["code"] == "channel_disabled"  # type: ignore[index]
        assert not b.events
        # nothing reached a port: there is no WhatsApp port, and the voice port carried out nothing
        assert Channel.WHATSAPP not in app.ports
        for channel in Channel:
            seen = await scripted_ledger(b, app, channel, patience_s=0.5)
            assert (seen.compared, seen.attempts, seen.wire) == (0, 0, 0)


BAD: list[tuple[str, bytes, str, str | None]] = [
    ("dial", b"{not json", "invalid_json", None),
    ("dial", json.dumps(dial("x1", "k", "+420601234560", mode=7)).encode(), "invalid_field", "mode"),
    ("explode", json.dumps(dial("x2", "k", "+420601234560")).encode(), "unknown_kind", "kind"),
    (
        "dial",
        json.dumps({"campaign_id": "spring", "contact_id": "k", "phone": "1"}).encode(),
        "missing_field",
        "command_id",
    ),
    ("dial", json.dumps(dial("x3", "k/1", "+420601234560")).encode(), "invalid_field", "contact_id"),
    ("dial", json.dumps(dial("x4", "k+", "+420601234560")).encode(), "invalid_field", "contact_id"),
    ("dial", json.dumps(dial("x5", "k#", "+420601234560")).encode(), "invalid_field", "contact_id"),
    ("dial", json.dumps(dial("x6", "k", "+420601234560", extra=True)).encode(), "unknown_field", "extra"),
    (
        "dial",
        json.dumps(dial("x7", "k", "+420601234560", meta={"a": "b" * 70_000})).encode(),
        "payload_too_large",
        None,
    ),
    (
        "campaign",
        json.dumps({"command_id": "x8", "campaign_id": "c", "action": "explode"}).encode(),
        "invalid_field",
        "action",
    ),
    ("dial", b"\xff\xfe", "invalid_json", None),
    # NaN and Infinity are not JSON (RFC 8259), though Python's json reads them: taken in, a NaN in `meta`
    # made every event of the contact unencodable, so the command's work failed and was never acknowledged
    (
        "dial",
        json.dumps(dial("x9", "k", "+420601234560", meta={"score": float("nan")})).encode(),
        "invalid_json",
        None,
    ),
    (
        "send",
        b'{"command_id": "x10", "campaign_id": "c", "contact_id": "k", "phone": "+1", "x": -Infinity}',
        "invalid_json",
        None,
    ),
]


async def test_bad_input_is_rejected_naming_the_field_and_changes_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        for kind, payload, _, _ in BAD:
            await b.send(kind, payload)
        await b.wait_for(lambda: len(b.results) == len(BAD))
        got = sorted((r["error"]["code"], r["error"]["field"]) for r in b.results)
        assert got == sorted((code, field) for _, _, code, field in BAD)
        assert all(not r["accepted"] for r in b.results)
        assert not b.events and not b.campaigns  # nothing changed
        await b.send("dial", dial("fine", "k", "+420601234560"))  # and the service is still up
        await b.wait_for(lambda: b.final("spring", "k"))
        seen = await scripted_ledger(b, app, Channel.VOICE)  # only the good dial reached the port
        assert (seen.compared, seen.attempts, seen.wire) == (1, 1, 1)


async def test_planned_campaign_starts_on_its_timer_and_talk_budget_pauses(broker: Mosquitto, tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    async with backend(broker.url) as b, gateway(settings_for(broker.url, tmp_path)) as app:
        start_at = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        camp = {"campaign_id": "later"}
        await b.send(
            "campaign", {"command_id": "p0", **camp, "action": "create", "budget": {"max_talk_minutes": 0.3}}
        )  # 18 s; each scripted call talks 12 s
        await b.send("campaign", {"command_id": "p1", **camp, "action": "start", "start_at": start_at})
        for i in range(3):
            await b.send("dial", dial(f"l{i}", f"k{i}", "+420601234560", campaign="later"))
        await b.wait_for(lambda: b.result("l2") is not None)
        assert [c["status"] for c in b.campaigns if c["campaign_id"] == "later"] == ["draft", "planned"]
        assert b.statuses("later", "k0") == ["initial"]
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns if c["campaign_id"] == "later"))
        paused = [c for c in b.campaigns if c["campaign_id"] == "later"][-1]
        assert paused["reason"] == "budget_spent" and paused["previous_status"] == "in_progress"
        await b.send("campaign", {"command_id": "p2", **camp, "action": "resume"})
        await b.wait_for(lambda: b.result("p2") is not None)
        assert b.result("p2")["error"]["code"] == "budget_spent"  # type: ignore[index]
        # the wire ledger (SPEC §9): nothing was dialled before the timer; then the three queued contacts
        # were dialled together (at 1000/s, before any scripted call ended) — once each, none after the pause
        seen = await scripted_ledger(b, app, Channel.VOICE)
        assert (seen.compared, seen.attempts, seen.wire) == (3, 3, 3)
