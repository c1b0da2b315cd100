"""Voice end to end: telgate's SIP UAC → SIPp as the PBX (scenarios in tests/sipp/) → events on Mosquitto."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway, settings_for
from tests.support.sipp import Sipp

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Status:
    status: int


# scenario → (final status, evidence on the last event)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "busy_486.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 486, "q850_cause": 17}),
    "decline_603.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 603}),
    "noanswer_480.xml": ("completed_without_answer", {"kind": "unreachable", "sip_code": 480}),
    "notfound_404.xml": ("invalid_record", {"kind": "invalid_number", "sip_code": 404}),
    "address_484.xml": ("invalid_record", {"kind": "invalid_number", "sip_code": 484}),
    "unavailable_503.xml": ("dial_failed", {"kind": "failed", "sip_code": 503, "reason": "Service Unavailable"}),
    "congestion_503_q850_34.xml": (
        "completed_without_answer",
        {"kind": "unreachable", "sip_code": 503, "q850_cause": 34},
    ),
    "progress_183_then_486.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 486}),
    "ring_forever.xml": ("completed_without_answer", {"kind": "unreachable", "sip_code": 487}),
    "auth_401_then_486.xml": ("completed_without_answer", {"kind": "rejected", "sip_code": 486}),
}


def voice_settings(broker: Mosquitto, tmp_path: Path, pbx: str) -> Any:
    return settings_for(
        broker.url,
        tmp_path,
        sip={"pbx": pbx, "local": "127.0.0.1:0", "ring_timeout_s": 1.0, "username": "telgate", "password": "secret"},
    )


@pytest.mark.parametrize("scenario", list(ROWS))
async def test_every_row_against_sipp(scenario: str, broker: Mosquitto, tmp_path: Path) -> None:
    final, evidence = ROWS[scenario]
    with Sipp(scenario, tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send(
                "dial",
                {
                    "command_id": "d1",
                    "campaign_id": "v",
                    "contact_id": "k",
                    "phone": "+420601234567",
                    "policy": {"max_attempts": 1},
                },
            )
            try:
                await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nSIPp errors:\n{pbx.errors()}") from None
            events = b.unique("v", "k")
            assert [e["status"] for e in events][-1] == final
            assert [e["status"] for e in events][:2] == ["initial", "calling"]
            last = events[-1]["signal"]
            for k, v in evidence.items():
                assert last[k] == v, (k, last)
            assert last["source"] == "sip" and last["call_id"]


async def test_answered_then_the_callee_hangs_up(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("answer_then_bye.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send("dial", {"command_id": "d1", "campaign_id": "v", "contact_id": "k", "phone": "+420601234567"})
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            events = b.unique("v", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            end = events[-1]["signal"]
            assert end["q850_cause"] == 16 and 0.8 <= end["duration_s"] <= 3.0
            await asyncio.sleep(0.2)
            assert pbx.proc is not None and pbx.proc.wait(5) == 0, pbx.errors()  # SIPp saw its scenario through


async def test_200_crossing_our_cancel_is_acked_then_byed(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("answer_after_cancel.xml", tmp_path / "sipp") as pbx:
        settings = voice_settings(broker, tmp_path, pbx.address)
        async with backend(broker.url) as b, gateway(settings, channels=()):
            await b.send(
                "dial",
                {
                    "command_id": "d1",
                    "campaign_id": "v",
                    "contact_id": "k",
                    "phone": "+420601234567",
                    "policy": {"ring_timeout_s": 30},
                },
            )
            await b.wait_for(lambda: b.statuses("v", "k")[-1:] == ["calling"])
            await asyncio.sleep(0.3)  # ringing
            await b.send("cancel", {"command_id": "x1", "campaign_id": "v", "contact_id": "k"})
            await b.wait_for(lambda: b.final("v", "k"))
            assert [e["status"] for e in b.unique("v", "k")] == ["initial", "calling", "canceled_by_admin"]
            assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 10) == 0, pbx.errors()


async def test_client_hangs_up_before_the_operator_connects(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("answer_then_bye.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send(
                "dial",
                {
                    "command_id": "d1",
                    "campaign_id": "p",
                    "contact_id": "k",
                    "phone": "+420601234567",
                    "mode": "predictive",
                },
            )
            await b.wait_for(lambda: b.final("p", "k"), timeout=15)
            statuses = [e["status"] for e in b.unique("p", "k")]
            assert statuses == ["initial", "calling", "awaiting_operator", "canceled_by_client"]


async def test_the_sip_port_answers_bad_and_stray_requests(broker: Mosquitto, tmp_path: Path) -> None:
    import socket

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.conftest import CORPORA

    async with gateway(voice_settings(broker, tmp_path, "127.0.0.1:9"), channels=()) as app:
        assert app.voice is not None
        await asyncio.wait_for(app.voice.ready.wait(), 5)
        port = app.voice.ua.cfg.local_port

        def ask(data: bytes) -> Status | None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(1.0)
                s.sendto(data, ("127.0.0.1", port))
                try:
                    reply = s.recv(65536)
                except TimeoutError:
                    return None
            return Status(int(reply.split(b" ", 2)[1]))  # the status line (a reply may echo a bad Via)

        base = (
            "{m} sip:telgate@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKq\r\n"
            "From: <sip:pbx@127.0.0.1>;tag=1\r\nTo: <sip:telgate@127.0.0.1>\r\nCall-ID: stray\r\n"
            "CSeq: 1 {m}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        options = await asyncio.to_thread(ask, base.format(m="OPTIONS").encode())
        assert options is not None and options.status == 200
        bye = await asyncio.to_thread(ask, base.format(m="BYE").encode())
        assert bye is not None and bye.status == 481  # no such dialog
        mismatch = base.format(m="BYE").replace("CSeq: 1 BYE", "CSeq: 1 INVITE").encode()
        bad = await asyncio.to_thread(ask, mismatch)
        assert bad is not None and bad.status == 400
        torture = CORPORA / "sip" / "rfc4475" / "badvers.dat"
        if torture.exists():
            vers = await asyncio.to_thread(ask, torture.read_bytes())
            assert vers is not None and vers.status == 505

        @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.binary(max_size=1500))
        def fuzz(data: bytes) -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(data, ("127.0.0.1", port))

        await asyncio.to_thread(fuzz)
        await asyncio.sleep(0.3)
        after = await asyncio.to_thread(ask, base.format(m="OPTIONS").encode())
        assert after is not None and after.status == 200  # still answering
        assert app.voice.ua.stats["out_of_dialog_options"] >= 2


async def test_pbx_down_pauses_voice_campaigns(broker: Mosquitto, tmp_path: Path) -> None:
    from tests.support.sipp import free_udp_port

    silent = f"127.0.0.1:{free_udp_port()}"  # nothing answers there
    settings = settings_for(
        broker.url, tmp_path, sip={"pbx": silent, "local": "127.0.0.1:0", "options_interval_s": 0.2}
    )
    async with backend(broker.url) as b, gateway(settings, channels=()) as app:
        await b.send("campaign", {"command_id": "c1", "campaign_id": "v", "action": "create"})
        await b.send(
            "dial",
            {"command_id": "d1", "campaign_id": "v", "contact_id": "k", "phone": "+420601234567", "mode": "preview"},
        )  # waits for an operator: no call is placed
        await b.send("campaign", {"command_id": "c2", "campaign_id": "v", "action": "start"})
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns if c["campaign_id"] == "v"))
        paused = [c for c in b.campaigns if c["campaign_id"] == "v"][-1]
        assert paused["reason"].startswith("pbx_down") and "OPTIONS" in paused["reason"]
        assert app.voice is not None and app.voice.state == "down"
        await b.wait_for(lambda: b.presence.get("gw-test") is not None)


async def test_pbx_answering_options_stays_up(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("options_200.xml", tmp_path / "sipp", calls=1000) as pbx:
        settings = settings_for(
            broker.url, tmp_path, sip={"pbx": pbx.address, "local": "127.0.0.1:0", "options_interval_s": 0.2}
        )
        async with gateway(settings, channels=()) as app:
            await asyncio.sleep(1.2)
            assert app.voice is not None and app.voice.state == "up"
            text = __import__("prometheus_client").generate_latest(app.recorder.registry).decode()
            assert "telgate_pbx_up 1.0" in text and "telgate_pbx_options_rtt_seconds_count" in text


async def test_registers_with_digest_and_refreshes(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("register_401.xml", tmp_path / "sipp") as pbx:
        settings = settings_for(
            broker.url,
            tmp_path,
            sip={
                "pbx": pbx.address,
                "local": "127.0.0.1:0",
                "register": True,
                "register_expires_s": 60,
                "username": "telgate",
                "password": "secret",
            },
        )
        async with gateway(settings, channels=()) as app:
            assert app.voice is not None
            reg = app.voice.ua.registration
            assert reg is not None
            deadline = asyncio.get_running_loop().time() + 10
            while not (reg.registered and reg.cseq >= 3) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            assert reg.registered and reg.granted_s == 2 and reg.cseq == 3, (reg.last_status, pbx.errors())
            assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 5) == 0, pbx.errors()
