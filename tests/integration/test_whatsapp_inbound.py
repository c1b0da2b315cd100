"""What customers send back reaches the backend (issue 22), end to end: the Cloud API stand-in signs and
POSTs Meta's payloads (the corpus's and its own) to the gateway's webhook over real HTTP, Mosquitto
carries what the gateway publishes, and the stand-in's and the voice port's records are compared with
the events (an opted-out number reaches neither)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from gateway.domain.statuses import Channel
from tests.conftest import CORPORA
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, scripted_ledger
from tests.support.settle import settled
from tests.support.wa import SECRET, TOKEN, VERIFY, send, wa_ledger, wa_rig
from whatsapp.standin import Scenario, StandIn

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]
FOLDER = CORPORA / "whatsapp"
CUSTOMER = "420601234567"
RULES = {
    "match": "context",
    "confirm": {"buttons": ["CONFIRM"], "keywords": {"cs": ["ano", "přijdu"], "en": ["yes"]}},
    "decline": {"buttons": ["DECLINE"], "keywords": {"cs": ["ne"], "en": ["no"]}},
}


async def _campaign(b: Backend, campaign: str, **kw: Any) -> None:
    await b.send("campaign", {"command_id": f"c-{campaign}", "campaign_id": campaign, "action": "create", **kw})
    await b.send("campaign", {"command_id": f"s-{campaign}", "campaign_id": campaign, "action": "start"})
    await b.wait_for(lambda: b.result(f"s-{campaign}") is not None)


async def _sent_and_read(b: Backend, standin: StandIn, campaign: str, contact: str, number: str) -> str:
    """A template sent to `number`, read: the wamid the stand-in gave it."""
    await b.send("send", send(f"{campaign}-{contact}", contact, number, campaign=campaign))
    await b.wait_for(lambda: b.statuses(campaign, contact)[-1:] == ["read"])
    return next(
        s.wamid for s in standin.sent if s.callback_data and s.callback_data.startswith(f"{campaign}/{contact}/")
    )


async def test_every_inbound_message_of_the_corpus_is_published_once(broker: Mosquitto, tmp_path: Path) -> None:
    files = sorted(FOLDER.glob("*incoming*.json")) if FOLDER.is_dir() else []
    if not files:
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path) as (app, standin):
        wamids: set[str] = set()
        for index, path in enumerate(files):
            body = json.loads(path.read_bytes())
            for entry in body.get("entry", []):
                for change in entry.get("changes", []):
                    for m in change.get("value", {}).get("messages", []):
                        # the libraries' fixtures reuse placeholder ids (wamid.xyzxyz) across files: one id per
                        # file here; within a file they stay (two identical messages in one POST: one event)
                        m["id"] = f"{m['id']}.{index}"
                        wamids.add(m["id"])
            for _ in range(2):  # Meta repeats a POST it got no 200 for
                assert await standin.post_until_ok(body) == 200, path.name
        await b.wait_for(lambda: {m["wamid"] for m in b.inbound} >= wamids, timeout=20)
        await settled(b, app)  # every POST answered after its commit: a repeat would be published and here
        assert sorted(m["wamid"] for m in b.inbound) == sorted(wamids), "each message once"
        by_id = {m["wamid"]: m for m in b.inbound}
        types = {m["type"] for m in b.inbound}
        assert {"text", "button", "interactive", "image", "location", "contacts", "reaction"} <= types, types
        for m in b.inbound:
            assert m["schema"] == "telgate.inbound-message/1" and m["from"].startswith("+"), m
        media = [m for m in b.inbound if m["type"] in ("image", "video", "audio", "document", "sticker")]
        assert media and all(m["media"]["id"] and m["media"]["mime_type"] for m in media)
        unsupported = [m for m in b.inbound if m["type"] == "unsupported"]
        assert unsupported and all(m["raw"] and m["errors"] for m in unsupported)
        assert any(m.get("referral") for m in b.inbound)
        assert any(m.get("profile_name") for m in b.inbound)
        assert all(m.get("reply") is None for m in by_id.values())  # none answers one of ours


async def test_a_reply_to_our_message_is_replied_with_its_outcome(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path) as (_app, standin):
        await _campaign(b, "visits", replies=RULES)
        numbers = {"k1": "420601234561", "k2": "420601234562", "k3": "420601234563"}
        wamid = {k: await _sent_and_read(b, standin, "visits", k, n) for k, n in numbers.items()}
        # a quick-reply button, a text in Czech with accents and capitals, a free text: and a status and a
        # reply in one POST, the reply first (the statuses of a POST are applied first; read < replied)
        await standin.post_messages(
            [standin.button_message(numbers["k1"], "CONFIRM", "Potvrdit", context_id=wamid["k1"])]
        )
        status = {"id": wamid["k2"], "status": "read", "timestamp": "1", "recipient_id": numbers["k2"]}
        await standin.post_messages(
            [standin.text_message(numbers["k2"], "  ANO, přijdu!", context_id=wamid["k2"])], statuses=[status]
        )
        await standin.post_messages([standin.text_message(numbers["k3"], "Kdy přesně?", context_id=wamid["k3"])])
        await b.wait_for(lambda: all(b.statuses("visits", k)[-1:] == ["replied"] for k in numbers))
        outcomes = {k: b.unique("visits", k)[-1]["signal"]["reply"]["outcome"] for k in numbers}
        assert outcomes == {"k1": "confirm", "k2": "confirm", "k3": "other"}
        last = b.unique("visits", "k1")[-1]
        assert last["final"] and last["label"] == "Replied" and last["previous_status"] == "read"
        assert last["signal"]["reply"] == {
            "type": "button",
            "text": "Potvrdit",
            "payload": "CONFIRM",
            "outcome": "confirm",
        }
        await b.wait_for(lambda: len(b.inbound) == 3)
        for m in b.inbound:
            key = next(k for k, n in numbers.items() if m["from"] == f"+{n}")
            assert m["context"]["id"] == wamid[key]
            assert (m["context"]["campaign_id"], m["context"]["contact_id"]) == ("visits", key)
            assert m["reply"]["status"] == "replied"
        # a second reply is an inbound message only; the first one decided
        await standin.post_messages([standin.text_message(numbers["k1"], "ne", context_id=wamid["k1"])])
        await b.wait_for(lambda: len(b.inbound) == 4)
        assert b.statuses("visits", "k1").count("replied") == 1
        seen = await wa_ledger(b, standin)
        assert seen.compared == 3 and seen.attempts == seen.wire == 3


async def test_stop_blacklists_the_number_for_both_channels(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        backend(broker.url) as b,
        wa_rig(broker.url, tmp_path, channels=(Channel.VOICE,)) as (app, standin),
    ):
        wamid = await _sent_and_read(b, standin, "news", "k1", CUSTOMER)
        await standin.post_messages([standin.text_message(CUSTOMER, "STOP", context_id=wamid)])
        await b.wait_for(lambda: b.statuses("news", "k1")[-1:] == ["replied"])
        assert b.unique("news", "k1")[-1]["signal"]["reply"]["outcome"] == "opt_out"
        # a STOP with no context, from a number no campaign has written to, counts too
        await standin.post_messages([standin.text_message("420601234599", "unsubscribe")])
        await b.wait_for(lambda: len(b.inbound) == 2)
        for number, campaign in ((CUSTOMER, "later"), ("420601234599", "later2")):
            await b.send("send", send(f"w-{campaign}", "k2", number, campaign=campaign))
            await b.send("dial", {"command_id": f"d-{campaign}", "campaign_id": f"{campaign}-v", "contact_id": "k3",
                                  "phone": f"+{number}"})  # fmt: skip
            await b.wait_for(lambda c=campaign: b.final(c, "k2") and b.final(f"{c}-v", "k3"))
            assert b.statuses(campaign, "k2")[-1] == "blacklisted"
            assert b.statuses(f"{campaign}-v", "k3")[-1] == "blacklisted"
        # the wire: the stand-in got the one send before STOP, the voice port nothing
        seen = await wa_ledger(b, standin)
        assert seen.wire == seen.attempts == 1
        assert [s.to for s in standin.received] == [CUSTOMER]
        voice = await scripted_ledger(b, app, Channel.VOICE)
        assert voice.wire == voice.attempts == 0


async def test_metas_notices_pause_campaigns_and_refuse_marketing(broker: Mosquitto, tmp_path: Path) -> None:
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path) as (_app, standin):
        # a template Meta paused: the campaign that sends it pauses before sending, with the reason
        await standin.post_notice(
            "message_template_status_update",
            standin.template_status_value("appointment_reminder", "PAUSED", language="cs", reason="LOW_QUALITY"),
        )
        await b.wait_for(lambda: any(n["field"] == "message_template_status_update" for n in b.notices))
        await b.send("send", send("t1", "k1", "420601234571", campaign="tpl"))
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns if c["campaign_id"] == "tpl"))
        paused = [c for c in b.campaigns if c["campaign_id"] == "tpl"][-1]
        assert paused["reason"] == "whatsapp_template_paused:appointment_reminder"
        assert b.statuses("tpl", "k1") == ["initial"]
        # reinstated: visible on the bus; the operator resumes and the send goes
        await standin.post_notice(
            "message_template_status_update",
            standin.template_status_value("appointment_reminder", "REINSTATED", language="cs"),
        )
        await b.wait_for(lambda: len(b.notices) == 2)
        assert b.notices[-1]["event"] == "REINSTATED"
        await b.send("campaign", {"command_id": "r1", "campaign_id": "tpl", "action": "resume"})
        await b.wait_for(lambda: b.final("tpl", "k1"))
        # Meta's "stop marketing messages": a MARKETING send to that number is refused, a UTILITY one goes
        await standin.post_notice("user_preferences", standin.user_preferences_value("420601234572", "stop"))
        await b.wait_for(lambda: len(b.notices) == 3 and b.notices[-1]["effect"] == "marketing_opt_out")
        marketing = {"name": "promo", "language": "cs", "category": "MARKETING"}
        utility = {"name": "appointment_reminder", "language": "cs", "category": "UTILITY"}
        await b.send("send", send("m1", "k2", "420601234572", campaign="promo", template=marketing))
        await b.send("send", send("m2", "k3", "420601234572", campaign="visit", template=utility))
        await b.wait_for(lambda: b.final("promo", "k2") and b.final("visit", "k3"))
        refused = b.unique("promo", "k2")[-1]
        assert refused["status"] == "blacklisted" and refused["signal"]["reason"] == "marketing_opt_out"
        assert b.statuses("visit", "k3")[-1] == "read"
        # an account restriction pauses every WhatsApp campaign in progress
        await b.send("send", send("a1", "k4", "420601234573", campaign="acct",
                                  template=utility))  # fmt: skip
        await b.wait_for(lambda: b.final("acct", "k4"))
        await standin.post_notice(
            "account_update",
            {
                "phone_number": "15550000000",
                "event": "ACCOUNT_RESTRICTION",
                "restriction_info": [{"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION"}],
            },
        )
        await b.wait_for(lambda: b.notices[-1]["field"] == "account_update")
        assert b.notices[-1]["effect"] == "campaigns_paused" and "acct" in b.notices[-1]["campaigns"]
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns if c["campaign_id"] == "acct"))
        # the wire: the paused template and the refused marketing send never reached the stand-in
        assert sorted(s.template for s in standin.received) == ["appointment_reminder"] * 3
        seen = await wa_ledger(b, standin)
        assert seen.wire == seen.attempts == 3


async def test_corpus_notices_are_published_and_kept(broker: Mosquitto, tmp_path: Path) -> None:
    files = sorted((FOLDER / "notices").glob("*.json")) if FOLDER.is_dir() else []
    if not files:
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path) as (_app, standin):
        for path in files:
            assert await standin.post_until_ok(json.loads(path.read_bytes())) == 200, path.name
        await b.wait_for(lambda: len(b.notices) >= len(files), timeout=15)
        fields = {n["field"] for n in b.notices}
        assert {"account_update", "message_template_status_update", "message_template_quality_update",
                "user_preferences"} <= fields, fields  # fmt: skip
        effects = {n["event"]: n.get("effect") for n in b.notices if n["field"] == "account_update"}
        assert effects.get("ACCOUNT_RESTRICTION") == "campaigns_paused", effects


async def test_an_inbound_message_committed_before_a_sigkill_is_published_after_the_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    from tests.integration.test_faults import _start_gateway

    async with StandIn(
        access_token=TOKEN, app_secret=SECRET, webhook_url="http://127.0.0.1:9/unset", default=Scenario()
    ) as standin:
        cfg, log = tmp_path / "telgate.toml", tmp_path / "gateway.log"
        http_port = _free_port()
        cfg.write_text(
            f'[gateway]\nid = "gw-wa"\ndata_dir = "{tmp_path / "gw"}"\ndrain_timeout_s = 5\n'
            f'[bus]\nurl = "{broker.url}"\n[http]\nlisten = "127.0.0.1:{http_port}"\n'
            f'[whatsapp]\napi_base = "{standin.api_base}"\nphone_number_id = "{standin.phone_number_id}"\n'
            f'access_token = "{TOKEN}"\napp_secret = "{SECRET}"\nverify_token = "{VERIFY}"\n'
        )
        standin.webhook_url = f"http://127.0.0.1:{http_port}/webhooks/whatsapp"
        proc = _start_gateway(cfg, log)
        try:
            async with backend(broker.url) as b:
                await b.wait_for(lambda: b.presence.get("gw-wa") == "online", timeout=20)
                broker.stop()  # nothing can be published: the 200 says only that it is committed
                message = standin.text_message(CUSTOMER, "Dobrý den, mám dotaz")
                assert await standin.post_messages([message], retry=False) == 200
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                broker.start()
                proc = _start_gateway(cfg, log)
                await b.wait_for(lambda: any(m["wamid"] == message["id"] for m in b.inbound), timeout=30)
                assert [m["text"] for m in b.inbound if m["wamid"] == message["id"]][:1] == ["Dobrý den, mám dotaz"]
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0, log.read_text()[-2000:]


def _free_port() -> int:
    from tests.support.broker import free_port

    return free_port()


async def test_a_message_without_context_is_a_reply_only_where_the_campaign_matches_by_sender(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path) as (_app, standin):
        await _campaign(b, "by-sender", replies={**RULES, "match": "sender"})
        await _campaign(b, "by-context", replies=RULES)
        await _sent_and_read(b, standin, "by-sender", "k1", "420601234581")
        await _sent_and_read(b, standin, "by-context", "k2", "420601234582")
        await standin.post_messages([standin.text_message("420601234581", "Ano")])
        await standin.post_messages([standin.text_message("420601234582", "Ano")])
        await b.wait_for(lambda: len(b.inbound) == 2)
        await b.wait_for(lambda: b.statuses("by-sender", "k1")[-1:] == ["replied"])
        assert b.unique("by-sender", "k1")[-1]["signal"]["reply"]["outcome"] == "confirm"
        assert b.statuses("by-context", "k2")[-1] == "read"  # no context: not taken as its reply
        by_from = {m["from"]: m for m in b.inbound}
        assert by_from["+420601234581"]["reply"]["contact_id"] == "k1"
        assert by_from["+420601234581"].get("context") is None
        assert by_from["+420601234582"].get("reply") is None
