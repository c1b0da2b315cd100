"""SIP over TLS with programs we did not write: Kamailio's tls module as the PBX's TLS side, baresip
registered to it over TLS, certificates from a throwaway CA made with openssl in the test's folder.

The Debian SIPp (3.6.1) is built without OpenSSL (`-t l1`: "To use a TLS transport you must compile SIPp
with OpenSSL"), so Kamailio is the TLS peer of every case here, the bad certificates included: what it
logged (the wire ledger) is compared with the events.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_voice_pbx import NUMBER, _prompt
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.certs import Issued, Pki
from tests.support.harness import backend, gateway, settings_for
from tests.support.pbx import Baresip, Kamailio, KamailioTls

pytestmark = pytest.mark.integration


def _tls_settings(broker: Mosquitto, tmp_path: Path, kam: Kamailio, ca: Path, **sip: Any) -> Any:
    return settings_for(
        broker.url,
        tmp_path,
        sip={
            "pbx": kam.tls_address,
            "transport": "tls",
            "ca_file": str(ca),
            "local": "127.0.0.1:0",
            "register": True,
            "username": "telgate",
            "password": "secret",
            "ring_timeout_s": 10,
            "prompts_dir": str(tmp_path / "prompts"),
            **sip,
        },
    )


def _tls_invites(kam: Kamailio) -> list[str]:
    """The lines Kamailio logged for initial INVITEs: who, to whom, over which transport, which URI scheme."""
    return [line for line in kam.log.read_text(errors="replace").splitlines() if "initial INVITE" in line]


async def test_call_over_tls_through_kamailio_to_baresip(broker: Mosquitto, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    _prompt(tmp_path / "prompts", 1.0)
    tls = KamailioTls(pki.issue("pbx", "IP:127.0.0.1,DNS:pbx.test"), pki.ca)
    with (
        Kamailio(tmp_path / "kamailio", tls=tls) as kam,
        Baresip(tmp_path / "baresip", kam.tls_address, (NUMBER,), tls=(pki.issue("phone"), pki.ca)) as phone,
    ):
        settings = _tls_settings(broker, tmp_path, kam, pki.ca, tls_server_name="pbx.test")
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            await b.wait_for(lambda: kam.logged("registered sip:telgate@127.0.0.1"), timeout=10)
            dial = {"command_id": "d1", "campaign_id": "tls", "contact_id": "k1", "phone": f"+{NUMBER}"}
            await b.send("dial", {**dial, "prompt": "notice.wav", "policy": {"max_attempts": 1}})
            await b.wait_for(lambda: b.final("tls", "k1"), timeout=20)
            events = b.unique("tls", "k1")
            statuses = [e["status"] for e in events]
            assert statuses == ["initial", "calling", "call_in_progress", "success"], phone.text()[-2000:]
            end = events[-1]["signal"]
            assert end["kind"] == "hangup" and 0.9 <= end["duration_s"] <= 3.0
            seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam.log, from_user="telgate"))
            assert seen.attempts == 1 and seen.wire == 1
            assert app.voice is not None and app.voice.state == "up"
        invites = _tls_invites(kam)  # the INVITE and its answer to the proxy challenge
        assert invites and all(line.endswith(f"from telgate to {NUMBER} over tls (sips)") for line in invites), invites
        assert kam.logged(f"authenticated INVITE from telgate to {NUMBER}")
        text = phone.text()
        assert "{0/TLS/v4} 200 OK" in text  # baresip registered over TLS too
        assert "Call established" in text or "call established" in text, text[-2000:]


async def test_transfer_over_tls_comes_back_on_our_connection(broker: Mosquitto, tmp_path: Path) -> None:
    """telgate does not listen for TLS: baresip's NOTIFYs about our REFER reach it through Kamailio on the
    connection telgate opened, by the alias in our Via (RFC 5923). baresip 1.0 (libre 1.1) sends nothing
    to a sips: URI ("Function not implemented"), and Kamailio record-routes a sips: request with a sips:
    Route, so this trunk is configured the way such a PBX needs it: tls_scheme = "sip"
    (sip:...;transport=tls URIs, still over TLS)."""
    pki = Pki(tmp_path / "pki")
    tls = KamailioTls(pki.issue("pbx"), pki.ca)
    users = (NUMBER, "operator")
    with (
        Kamailio(tmp_path / "kamailio", tls=tls) as kam,
        Baresip(tmp_path / "baresip", kam.tls_address, users, tls=(pki.issue("phone"), pki.ca)) as phone,
    ):
        settings = _tls_settings(broker, tmp_path, kam, pki.ca, tls_scheme="sip")
        async with backend(broker.url) as b, gateway(settings, channels=()):
            await b.wait_for(lambda: kam.logged("registered sip:telgate@127.0.0.1"), timeout=10)
            dial = {"command_id": "d1", "campaign_id": "tls", "contact_id": "k1", "phone": f"+{NUMBER}"}
            connect_to = f"sip:operator@{kam.tls_address};transport=tls"
            # predictive calls are paced by the gateway: no operators, no calls (docs/lawful-calling.md)
            await b.send("campaign", {"command_id": "c1", "campaign_id": "tls", "action": "start", "operators": 1})
            await b.send("dial", {**dial, "mode": "predictive", "connect_to": connect_to})
            await b.wait_for(lambda: b.final("tls", "k1"), timeout=20)
            events = b.unique("tls", "k1")
            statuses = [e["status"] for e in events]
            expected = ["initial", "calling", "awaiting_operator", "call_in_progress", "success"]
            assert statuses == expected, phone.text()[-3000:]
            assert events[3]["signal"]["kind"] == "connected" and events[-1]["signal"]["transfer"] == "ok"
            seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam.log, from_user="telgate"))
            assert seen.attempts == 1 and seen.wire == 1
        assert kam.logged(f"authenticated INVITE from {NUMBER} to operator")  # baresip followed our REFER
        assert kam.logged(f"from telgate to {NUMBER} over tls (sip)")


def _bad(pki: Pki, case: str) -> tuple[Issued, Path]:
    """Kamailio's certificate for `case` and the CA telgate is told to trust."""
    if case == "wrong_host":
        return pki.issue("elsewhere", "DNS:elsewhere.example"), pki.ca
    if case == "expired":
        return pki.issue("old", "IP:127.0.0.1", expired=True), pki.ca
    stranger = Pki(pki.folder / "stranger", name="a CA telgate does not trust")
    return stranger.issue("pbx", "IP:127.0.0.1"), pki.ca


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_host", "certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'"),
        ("expired", "certificate verify failed: certificate has expired"),
        # Kamailio sends its CA along with its certificate: a chain ending in a root telgate does not trust
        ("unknown_ca", "certificate verify failed: self-signed certificate in certificate chain"),
    ],
)
async def test_a_bad_certificate_fails_the_attempt_and_marks_the_pbx_down(
    case: str, reason: str, broker: Mosquitto, tmp_path: Path
) -> None:
    pki = Pki(tmp_path / "pki")
    cert, trusted = _bad(pki, case)
    with Kamailio(tmp_path / "kamailio", tls=KamailioTls(cert, cert.cert.parent / "ca.pem")) as kam:
        settings = _tls_settings(broker, tmp_path, kam, trusted, register=False)
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            await b.send("campaign", {"command_id": "c1", "campaign_id": "tls", "action": "create"})
            await b.send("campaign", {"command_id": "c2", "campaign_id": "tls", "action": "start"})
            dial = {"command_id": "d1", "campaign_id": "tls", "contact_id": "k1", "phone": f"+{NUMBER}"}
            await b.send("dial", {**dial, "policy": {"max_attempts": 1}})
            await b.wait_for(lambda: b.final("tls", "k1"), timeout=20)
            events = b.unique("tls", "k1")
            assert [e["status"] for e in events] == ["initial", "calling", "dial_failed"]
            signal = events[-1]["signal"]
            assert signal["kind"] == "failed" and signal["sip_code"] is None
            assert signal["tls"].startswith(reason), signal
            assert signal["reason"] == f"transport error: tls: {signal['tls']}"
            await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns if c["campaign_id"] == "tls"))
            paused = [c for c in b.campaigns if c["campaign_id"] == "tls"][-1]
            assert paused["reason"] == f"pbx_down: tls: {signal['tls']}"
            assert app.voice is not None and app.voice.state == "down"
            pbx_label = {"pbx": app.voice.pbxs[0].address}
            assert app.recorder.registry.get_sample_value("telgate_pbx_up", pbx_label) == 0
        # the ledger: the attempt never reached the wire, and Kamailio's record says so
        assert ledger.kamailio_invites(kam.log)() == {} and _tls_invites(kam) == []


@pytest.mark.parametrize("with_cert", [True, False])
async def test_a_pbx_that_asks_for_our_certificate(with_cert: bool, broker: Mosquitto, tmp_path: Path) -> None:
    """Mutual TLS: with cert_file/key_file the call reaches Kamailio (404: nobody registered that number);
    without, Kamailio refuses us by an alert after our side of the TLS 1.3 handshake is done, and the
    INVITE written on that connection fails at once with the alert as its TLS reason, not after Timer B."""
    pki = Pki(tmp_path / "pki")
    mine = pki.issue("telgate")
    client = {"cert_file": str(mine.cert), "key_file": str(mine.key)} if with_cert else {}
    with Kamailio(tmp_path / "kamailio", tls=KamailioTls(pki.issue("pbx"), pki.ca, verify_clients=True)) as kam:
        settings = _tls_settings(broker, tmp_path, kam, pki.ca, register=False, **client)
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            dial = {"command_id": "d1", "campaign_id": "tls", "contact_id": "k1", "phone": "+420601999999"}
            await b.send("dial", {**dial, "policy": {"max_attempts": 1}})
            await b.wait_for(lambda: b.final("tls", "k1"), timeout=20)
            last = b.unique("tls", "k1")[-1]
            assert app.voice is not None
            if with_cert:
                assert last["status"] == "invalid_record" and last["signal"]["sip_code"] == 404
                assert app.voice.state == "up"
                seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam.log))
                assert seen.attempts == 1 and seen.wire == 1
            else:
                assert last["status"] == "dial_failed" and last["signal"]["sip_code"] is None
                assert "certificate required" in last["signal"]["tls"], last["signal"]
                assert app.voice.state == "down"
        if not with_cert:
            assert kam.logged("peer did not return a certificate") and _tls_invites(kam) == []
