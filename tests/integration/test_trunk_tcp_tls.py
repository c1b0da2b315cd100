"""Several PBXs over TCP and TLS (issue 14): two Kamailio instances as the PBXs, each with a baresip
registered behind it; telgate keeps a connection (and over TLS a certificate check) of its own per PBX.

Every test compares what each Kamailio logged (tests/pbx/kamailio.cfg logs every initial INVITE and every
other request of a call, with its Call-ID: the wire ledger) with the events: the attempts per number over
all the PBXs, and which PBX each call's INVITE, ACK and BYE reached.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_voice_pbx import NUMBER, _prompt
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.certs import Pki
from tests.support.harness import Backend, backend, gateway, settings_for
from tests.support.pbx import Baresip, Kamailio, KamailioTls

pytestmark = pytest.mark.integration
UNREGISTERED = "42060199999"  # + a digit: numbers nobody registered, each Kamailio answers 404 (invalid_record)


def _settings(broker: Mosquitto, tmp_path: Path, transport: str, pbx: list[Any], **sip: Any) -> Any:
    return settings_for(
        broker.url,
        tmp_path,
        sip={
            "pbx": pbx,
            "transport": transport,
            "local": "127.0.0.1:0",
            "username": "telgate",
            "password": "secret",
            "ring_timeout_s": 10,
            "options_interval_s": 0.3,
            "prompts_dir": str(tmp_path / "prompts"),
            **sip,
        },
    )


def _call_id(b: Backend, campaign: str, contact: str) -> str:
    (call_id,) = {e["signal"]["call_id"] for e in b.unique(campaign, contact) if (e.get("signal") or {}).get("call_id")}
    return str(call_id)


def _paused(b: Backend, campaign: str) -> list[dict[str, Any]]:
    return [c for c in b.campaigns if c["campaign_id"] == campaign and c["status"] == "paused"]


@contextlib.contextmanager
def _two_pbxs(tmp_path: Path, transport: str) -> Iterator[tuple[Kamailio, Kamailio, str, str, Path | None]]:
    """Two Kamailio PBXs, a baresip registered with NUMBER and `operator` behind each (over TLS for TLS), the addresses
    telgate is given; the CA to trust over TLS."""
    pki = Pki(tmp_path / "pki") if transport == "tls" else None
    with contextlib.ExitStack() as stack:
        pbxs: list[Kamailio] = []
        for n in (1, 2):
            tls = None if pki is None else KamailioTls(pki.issue(f"pbx{n}"), pki.ca)
            kam = stack.enter_context(Kamailio(tmp_path / f"kamailio{n}", tls=tls))
            proxy = kam.address if pki is None else kam.tls_address
            phone_tls = None if pki is None else (pki.issue(f"phone{n}"), pki.ca)
            users = (NUMBER, "operator")
            phone = stack.enter_context(Baresip(tmp_path / f"baresip{n}", proxy, users, tls=phone_tls))
            # the test stops the PBXs: a baresip told to stop then waits seconds to unregister over UDP
            stack.callback(lambda p=phone: p.proc is not None and p.proc.kill())
            pbxs.append(kam)
        first, second = pbxs
        if pki is None:
            yield first, second, first.address, second.address, None
        else:
            yield first, second, first.tls_address, second.tls_address, pki.ca


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_two_pbxs_share_calls_keep_each_dialog_and_only_all_down_pauses(
    transport: str, broker: Mosquitto, tmp_path: Path
) -> None:
    """Equal priorities: calls A and B go one to each PBX, are answered behind it and transferred to an
    operator there; each call's ACK, REFER and BYE reach the PBX of its INVITE on that PBX's connection, and
    the PBX's NOTIFYs reach telgate and are answered (over TLS on our own connection, RFC 5923: no listener;
    baresip 1.0 needs tls_scheme = "sip" for that, see test_voice_tls.py). PBX 1 is stopped: its connection
    drops, telgate re-opens it at once, is refused, and takes PBX 1 out; C and D go to PBX 2 and the campaign
    runs on. PBX 2 stopped too: the campaign pauses."""
    _prompt(tmp_path / "prompts", 1.0)
    with _two_pbxs(tmp_path, transport) as (kam1, kam2, addr1, addr2, ca):
        pbx = [{"address": addr1, "priority": 1}, {"address": addr2, "priority": 1}]
        tls = {"ca_file": str(ca), "tls_scheme": "sip"} if ca else {}
        settings = _settings(broker, tmp_path, transport, pbx, register=True, **tls)
        operator = "sip:operator@127.0.0.1" + (";transport=tls" if ca else "")
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            assert app.voice is not None

            def up(address: str) -> float | None:
                return app.recorder.registry.get_sample_value("telgate_pbx_up", {"pbx": address})

            def dial(contact: str) -> dict[str, Any]:
                cmd = {"command_id": f"d-{contact}", "campaign_id": "two", "contact_id": contact}
                return {**cmd, "phone": f"+{NUMBER}", "policy": {"max_attempts": 1}, "prompt": "notice.wav"}

            registered = "registered sip:telgate@127.0.0.1"  # register = true: with each PBX, on its connection
            await b.wait_for(lambda: kam1.logged(registered) and kam2.logged(registered), timeout=10)
            await b.send("campaign", {"command_id": "c1", "campaign_id": "two", "action": "create"})
            # predictive calls are paced by the gateway: no operators, no calls (docs/lawful-calling.md)
            await b.send("campaign", {"command_id": "c2", "campaign_id": "two", "action": "start", "operators": 2})
            for contact in ("a", "b"):
                transferred = {k: v for k, v in dial(contact).items() if k != "prompt"}
                await b.send("dial", {**transferred, "mode": "predictive", "connect_to": operator})
            await b.wait_for(lambda: b.final("two", "a") and b.final("two", "b"), timeout=20)
            for contact in ("a", "b"):
                events = b.unique("two", contact)
                statuses = [e["status"] for e in events]
                expected = ["initial", "calling", "awaiting_operator", "call_in_progress", "success"]
                assert statuses == expected, (contact, statuses)
                assert events[-1]["signal"]["transfer"] == "ok", events[-1]
            logs = (kam1.log, kam2.log)
            seen = await ledger.check(b, "voice", ledger.kamailio_invites(*logs))
            assert seen.attempts == 2 and seen.wire == 2
            at = [ledger.kamailio_requests(kam1.log), ledger.kamailio_requests(kam2.log)]
            where = {c: [i for i in (0, 1) if _call_id(b, "two", c) in at[i]] for c in ("a", "b")}
            assert sorted(where.values()) == [[0], [1]], where  # one call at each PBX, none at both
            for contact, (i,) in where.items():
                methods = at[i][_call_id(b, "two", contact)]
                assert methods[0] == "INVITE" and methods.count("BYE") == 1, methods
                assert {"ACK", "REFER", "NOTIFY"} <= set(methods), methods  # NOTIFY: the PBX's, we answered

            await asyncio.to_thread(kam1.__exit__)  # PBX 1 stops (SIGTERM): its connection closes
            await b.wait_for(lambda: up(addr1) == 0, timeout=5)
            assert up(addr2) == 1 and app.voice.state == "up" and not _paused(b, "two")
            assert app.voice.pbxs[0].why is not None and "connection failed" in app.voice.pbxs[0].why
            for contact in ("c", "d"):
                await b.send("dial", dial(contact))
            await b.wait_for(lambda: b.final("two", "c") and b.final("two", "d"), timeout=20)
            for contact in ("c", "d"):
                assert b.unique("two", contact)[-1]["status"] == "success"
                assert _call_id(b, "two", contact) in ledger.kamailio_requests(kam2.log)
            assert not _paused(b, "two")
            seen = await ledger.check(b, "voice", ledger.kamailio_invites(*logs))
            assert seen.attempts == 4 and seen.wire == 4

            await asyncio.to_thread(kam2.__exit__)  # now both are down
            await b.wait_for(lambda: bool(_paused(b, "two")), timeout=5)
            assert _paused(b, "two")[-1]["reason"].startswith("pbx_down: all 2 PBXs down"), _paused(b, "two")
            assert app.voice.state == "down" and up(addr2) == 0
        for kam in (kam1, kam2):  # every INVITE telgate sent there came over the configured transport
            lines = kam.log.read_text(errors="replace").splitlines()
            invites = [line for line in lines if "initial INVITE" in line and " from telgate " in line]
            assert invites and all(f" over {transport} " in line for line in invites), invites


async def test_a_bad_certificate_on_pbx_1_mid_run_takes_it_out_and_calls_go_to_pbx_2(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """PBX 1 (priority 1) takes call 1. It is restarted in place with a certificate for another name:
    telgate's connection drops, the re-opened one fails verification, PBX 1 is down with the TLS reason,
    and call 2 goes to PBX 2, whose certificate names only `pbx2.test` (its own tls_server_name)."""
    pki = Pki(tmp_path / "pki")
    with (
        Kamailio(tmp_path / "kamailio1", tls=KamailioTls(pki.issue("pbx1"), pki.ca)) as kam1,
        Kamailio(tmp_path / "kamailio2", tls=KamailioTls(pki.issue("pbx2", "DNS:pbx2.test"), pki.ca)) as kam2,
    ):
        pbx = [
            {"address": kam1.tls_address, "priority": 1},
            {"address": kam2.tls_address, "priority": 2, "tls_server_name": "pbx2.test"},
        ]
        settings = _settings(broker, tmp_path, "tls", pbx, ca_file=str(pki.ca))
        restarted: Kamailio | None = None
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            assert app.voice is not None
            first, second = app.voice.pbxs

            def dial(contact: str) -> dict[str, Any]:
                cmd = {"command_id": f"d-{contact}", "campaign_id": "cert", "contact_id": contact}
                return {**cmd, "phone": f"+{UNREGISTERED}{contact[-1]}", "policy": {"max_attempts": 1}}

            await b.send("campaign", {"command_id": "c1", "campaign_id": "cert", "action": "create"})
            await b.send("campaign", {"command_id": "c2", "campaign_id": "cert", "action": "start"})
            await b.send("dial", dial("k1"))
            await b.wait_for(lambda: b.final("cert", "k1"), timeout=10)
            assert b.unique("cert", "k1")[-1]["status"] == "invalid_record"  # 404 from PBX 1

            await asyncio.to_thread(kam1.__exit__)
            bad = KamailioTls(pki.issue("elsewhere", "DNS:elsewhere.example"), pki.ca)
            restarted = Kamailio(tmp_path / "kamailio1b", tls=bad, port=kam1.port)
            await asyncio.to_thread(restarted.__enter__)
            try:
                await b.wait_for(lambda: (first.why or "").startswith("tls: certificate verify failed"), timeout=5)
                assert "IP address mismatch" in (first.why or ""), first.why
                assert first.state == "down" and second.state == "up" and app.voice.state == "up"
                registry = app.recorder.registry
                assert registry.get_sample_value("telgate_pbx_up", {"pbx": kam1.tls_address}) == 0
                assert registry.get_sample_value("telgate_pbx_up", {"pbx": kam2.tls_address}) == 1
                await b.send("dial", dial("k2"))
                await b.wait_for(lambda: b.final("cert", "k2"), timeout=10)
                assert b.unique("cert", "k2")[-1]["status"] == "invalid_record"  # 404 from PBX 2
                assert not _paused(b, "cert")
                seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam1.log, restarted.log, kam2.log))
                assert seen.attempts == 2 and seen.wire == 2
                assert _call_id(b, "cert", "k1") in ledger.kamailio_requests(kam1.log)
                assert _call_id(b, "cert", "k2") in ledger.kamailio_requests(kam2.log)
                assert ledger.kamailio_requests(restarted.log) == {}  # nothing got past its handshake
            finally:
                await asyncio.to_thread(restarted.__exit__)
