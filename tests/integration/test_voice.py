"""Voice end to end: telgate's SIP UAC → SIPp as the PBX (scenarios in tests/sipp/) → events on Mosquitto."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import re
import struct
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sip import rtp, sdp
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway, settings_for
from tests.support.sipp import Sipp

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]


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


def voice_settings(broker: Mosquitto, tmp_path: Path, pbx: str, **sip: Any) -> Any:
    return settings_for(
        broker.url,
        tmp_path,
        sip={
            "pbx": pbx,
            "local": "127.0.0.1:0",
            "ring_timeout_s": 1.0,
            "username": "telgate",
            "password": "secret",
            **sip,
        },
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
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1


async def test_answered_then_the_callee_hangs_up(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("answer_then_bye.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send("dial", {"command_id": "d1", "campaign_id": "v", "contact_id": "k", "phone": "+420601234567"})
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            events = b.unique("v", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            end = events[-1]["signal"]
            assert end["q850_cause"] == 16 and 0.8 <= end["duration_s"] <= 3.0
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1
            # SIPp saw its scenario through
            assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 5) == 0, pbx.errors()


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
            await _until_sent(pbx, "SIP/2.0 180 ")  # ringing: SIPp's record says it sent the 180
            await b.send("cancel", {"command_id": "x1", "campaign_id": "v", "contact_id": "k"})
            await b.wait_for(lambda: b.final("v", "k"))
            assert [e["status"] for e in b.unique("v", "k")] == ["initial", "calling", "canceled_by_admin"]
            assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 10) == 0, pbx.errors()
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1


async def test_client_hangs_up_before_the_operator_connects(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("answer_then_bye.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            # predictive calls are paced by the gateway: no operators, no calls (docs/lawful-calling.md)
            await b.send("campaign", {"command_id": "c1", "campaign_id": "p", "action": "start", "operators": 1})
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
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1


async def test_the_sip_port_answers_bad_and_stray_requests(broker: Mosquitto, tmp_path: Path) -> None:
    import socket

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.conftest import CORPORA

    async with gateway(voice_settings(broker, tmp_path, "127.0.0.1:9"), channels=()) as app:
        assert app.voice is not None
        await asyncio.wait_for(app.voice.ready.wait(), 5)
        port = app.voice.ua.cfg.local_port

        def ask(data: bytes, wait_s: float = 1.0) -> Status | None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(wait_s)
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
        # a new transaction after the fuzz: the port takes datagrams in order, so its answer comes after
        # every fuzzed one was handled
        fresh = base.format(m="OPTIONS").replace("branch=z9hG4bKq", "branch=z9hG4bKq2")
        after = await asyncio.to_thread(ask, fresh.encode(), 10.0)
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
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            # several keepalives answered (their round trips counted), and the PBX is still up
            await b.wait_for(
                lambda: (
                    (
                        app.recorder.registry.get_sample_value(
                            "telgate_pbx_options_rtt_seconds_count", {"pbx": pbx.address}
                        )
                        or 0
                    )
                    >= 4
                )
            )
            assert app.voice is not None and app.voice.state == "up"
            text = __import__("prometheus_client").generate_latest(app.recorder.registry).decode()
            assert (
                f'telgate_pbx_up{{pbx="{pbx.address}"}} 1.0' in text and "telgate_pbx_options_rtt_seconds_count" in text
            )
            # the ledger: SIPp logged the OPTIONS, and no INVITE (nothing was dialled, no contact has events)
            assert _received(pbx.messages(), "OPTIONS ")
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.compared == 0 and seen.wire == 0


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
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            assert app.voice is not None
            reg = app.voice.ua.registration
            assert reg is not None
            deadline = asyncio.get_running_loop().time() + 10
            while not (reg.registered and reg.cseq >= 3) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            assert reg.registered and reg.granted_s == 2 and reg.cseq == 3, (reg.last_status, pbx.errors())
            assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 5) == 0, pbx.errors()
            # the ledger: SIPp logged the three REGISTERs, and no INVITE (nothing was dialled)
            assert len(_received(pbx.messages(), "REGISTER ")) >= 3
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.compared == 0 and seen.wire == 0


def _dial(contact: str = "k", campaign: str = "v", **extra: Any) -> dict[str, Any]:
    return {
        "command_id": f"d-{campaign}-{contact}",
        "campaign_id": campaign,
        "contact_id": contact,
        "phone": "+420601234567",
        "policy": {"max_attempts": 1},
        **extra,
    }


async def _until_sent(pbx: Sipp, first_line: str, count: int = 1, timeout_s: float = 10.0) -> None:
    """Return once SIPp's record (`-trace_msg`) holds `count` messages it sent starting with `first_line`."""
    async with asyncio.timeout(timeout_s):
        while len(_sent(pbx.messages(), first_line)) < count:
            await asyncio.sleep(0.02)


def _sent(messages: list[str], first_line: str) -> list[str]:
    return [m for m in messages if "message sent" in m.split("\n", 1)[0] and f"\n{first_line}" in m]


def _received(messages: list[str], first_line: str) -> list[str]:
    """SIPp's log lines say 'UDP message received' / 'TCP message received' above each message."""
    return [m for m in messages if "message received" in m.split("\n", 1)[0] and f"\n{first_line}" in m]


async def test_proxy_challenge_with_sha256_is_answered_with_the_right_digest(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("auth_407_sha256_then_486.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()):
            await b.send("dial", _dial())
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            assert b.unique("v", "k")[-1]["status"] == "completed_without_answer"
            assert b.unique("v", "k")[-1]["signal"]["sip_code"] == 486
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1  # the challenged INVITE and its retry: one Call-ID
        assert pbx.proc is not None and pbx.proc.wait(5) == 0, pbx.errors()
        invites = _received(pbx.messages(), "INVITE ")
    assert len(invites) == 2
    second = invites[1]
    header = next(line for line in second.splitlines() if line.lower().startswith("proxy-authorization:"))
    params = {k: a or v for k, a, v in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', header.split(":", 1)[1])}
    assert params["algorithm"] == "SHA-256" and params["qop"] == "auth" and params["realm"] == "pbx.example"

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = h("telgate:pbx.example:secret")
    ha2 = h(f"INVITE:{params['uri']}")
    expected = h(f"{ha1}:5f2c9d7e1b:{params['nc']}:{params['cnonce']}:auth:{ha2}")
    assert params["response"] == expected
    assert "CSeq: 2 INVITE" in second and re.search(r"branch=(\S+)", second) != re.search(r"branch=(\S+)", invites[0])


async def test_no_response_at_all_ends_on_timer_b(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("no_response.xml", tmp_path / "sipp") as pbx:
        settings = voice_settings(broker, tmp_path, pbx.address, t1_ms=50)  # Timer B = 64 x T1 = 3.2 s
        async with backend(broker.url) as b, gateway(settings, channels=()):
            started = asyncio.get_running_loop().time()
            await b.send("dial", _dial())
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            took = asyncio.get_running_loop().time() - started
            last = b.unique("v", "k")[-1]
            assert last["status"] == "dial_failed"
            assert last["signal"]["kind"] == "failed" and last["signal"]["sip_code"] is None
            # the timer's length is the behaviour: not before 64 x T1 (its end, not a deadline, is checked)
            assert "Timer B" in last["signal"]["reason"] and took >= 3.0
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1  # Timer A retransmissions are the same INVITE
        invites = _received(pbx.messages(), "INVITE ")
    assert len(invites) >= 5  # the INVITE and its Timer A retransmissions (T1, 2T1, 4T1, ...)


async def test_blind_transfer_to_connect_to_connects_the_predictive_call(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("answer_refer_notify.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(voice_settings(broker, tmp_path, pbx.address), channels=()) as app:
            # predictive calls are paced by the gateway: no operators, no calls (docs/lawful-calling.md)
            await b.send("campaign", {"command_id": "c1", "campaign_id": "v", "action": "start", "operators": 1})
            await b.send("dial", _dial(mode="predictive", connect_to="sip:agents@queue.example"))
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            events = b.unique("v", "k")
            statuses = [e["status"] for e in events]
            assert statuses == ["initial", "calling", "awaiting_operator", "call_in_progress", "success"]
            assert events[3]["signal"]["kind"] == "connected" and events[3]["signal"]["sip_code"] == 200
            assert events[-1]["signal"]["transfer"] == "ok"
            assert app.recorder.call_transfers.labels("ok")._value.get() == 1
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1  # the REFER starts no INVITE of ours
        assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 10) == 0, pbx.errors()


def _tone(path: Path, seconds: float) -> bytes:
    frames = int(8000 * seconds)
    pcm = struct.pack(f"<{frames}h", *(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(frames)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm)
    return pcm


class _RtpSink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.packets: list[tuple[float, bytes]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.packets.append((asyncio.get_running_loop().time(), data))


async def test_prompt_is_played_as_rtp_in_the_answered_codec_then_hung_up(broker: Mosquitto, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    pcm = _tone(prompts / "hello.wav", 0.5)
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(_RtpSink, local_addr=("127.0.0.1", 0))
    rtp_port = transport.get_extra_info("sockname")[1]
    try:
        with Sipp(
            "answer_media_then_wait_bye.xml", tmp_path / "sipp", extra=("-key", "rtp_port", str(rtp_port))
        ) as pbx:
            settings = voice_settings(broker, tmp_path, pbx.address, prompts_dir=str(prompts))
            async with backend(broker.url) as b, gateway(settings, channels=()):
                await b.send("dial", _dial("bad", prompt="missing.wav"))
                await b.send("dial", _dial(prompt="hello.wav"))
                await b.wait_for(lambda: b.final("v", "k"), timeout=15)
                refused = next(r for r in b.results if r["command_id"] == "d-v-bad")
                assert not refused["accepted"] and refused["error"]["field"] == "prompt"
                events = b.unique("v", "k")
                assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
                assert events[-1]["signal"]["kind"] == "hangup" and 0.45 <= events[-1]["signal"]["duration_s"] <= 1.5
                seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                assert seen.attempts == 1 and seen.wire == 1  # the refused dial put nothing on the wire
            assert pbx.proc is not None and pbx.proc.wait(5) == 0, pbx.errors()
    finally:
        transport.close()
    headers = [rtp.parse_header(p) for _, p in sink.packets]
    assert len(sink.packets) == 25 and all(h is not None and h[0] == sdp.PCMA for h in headers)
    sequences = [h[1] for h in headers if h is not None]
    assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(sequences))
    assert b"".join(p[12:] for _, p in sink.packets) == rtp.encode(pcm, sdp.PCMA)  # 4000 samples = 25 x 160
    spread = sink.packets[-1][0] - sink.packets[0][0]
    assert 0.4 <= spread <= 0.8  # paced at 20 ms, not sent in a burst


@pytest.mark.parametrize(
    ("scenario", "statuses"),
    [
        ("busy_486.xml", ["initial", "calling", "completed_without_answer"]),
        ("answer_then_bye.xml", ["initial", "calling", "call_in_progress", "success"]),
    ],
)
async def test_sip_over_tcp(scenario: str, statuses: list[str], broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp(scenario, tmp_path / "sipp", extra=("-t", "t1")) as pbx:
        await asyncio.to_thread(pbx.wait_listening)  # SIPp over TCP; with nothing listening: see below
        settings = voice_settings(broker, tmp_path, pbx.address, transport="tcp")
        async with backend(broker.url) as b, gateway(settings, channels=()):
            await b.send("dial", _dial())
            await b.wait_for(lambda: b.final("v", "k"), timeout=15)
            assert [e["status"] for e in b.unique("v", "k")] == statuses
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.attempts == 1 and seen.wire == 1
        assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 10) == 0, pbx.errors()


async def test_tcp_connection_refused_fails_the_attempt_at_once(broker: Mosquitto, tmp_path: Path) -> None:
    """SPEC §6.1: a transport error is `failed`; over TCP there are no retransmissions to wait for."""
    from tests.support.broker import free_port

    settings = voice_settings(broker, tmp_path, f"127.0.0.1:{free_port()}", transport="tcp")
    async with backend(broker.url) as b, gateway(settings, channels=()):
        await b.send("dial", _dial())
        # "at once": the transport's error ends it, not Timer B (32 s at the default T1, beyond this wait)
        await b.wait_for(lambda: b.final("v", "k"), timeout=10)
        last = b.unique("v", "k")[-1]
        assert last["status"] == "dial_failed" and last["signal"]["kind"] == "failed"
        assert last["signal"]["reason"].startswith("transport error") and last["signal"]["sip_code"] is None
