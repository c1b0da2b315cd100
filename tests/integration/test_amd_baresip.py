"""Who answered (docs/voice.md §6.3) with baresip as the callee behind Kamailio: telgate registers and dials
through Kamailio (UDP, or TLS with Kamailio's tls module), baresip auto-answers and plays a WAV into the
call through its aufile source (espeak-ng speech, tests/support/speech.py). The dial holds the call for
the verdict (`amd: {"wait": true}`) and carries `connect_to`; the AMD runs with the shipped defaults.
baresip's log and Kamailio's record of the call's requests are read beside the events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_voice_pbx import NUMBER, _settings
from tests.integration.test_voice_tls import _tls_settings
from tests.support import ledger, speech
from tests.support.broker import Mosquitto
from tests.support.certs import Pki
from tests.support.harness import backend, gateway
from tests.support.pbx import Baresip, Kamailio, KamailioTls

pytestmark = pytest.mark.integration
FIGURES: dict[str, list[Any]] = {}  # measured figures, printed at the end of the module

# baresip's aufile ends the call when the file has played: both last well past the verdict and the transfer
GREETING = speech.concat(
    speech.silence(200),
    speech.at_level(
        speech.speak("Hi, you have reached the voicemail of John Smith. I can't take your call right now."), -18
    ),
    speech.silence(8000),
)
HELLO = speech.concat(speech.silence(300), speech.at_level(speech.speak("Hello?"), -18), speech.silence(10000))


def _dial(connect_to: str) -> dict[str, Any]:
    return {
        "command_id": "d1",
        "campaign_id": "amd",
        "contact_id": "k",
        "phone": f"+{NUMBER}",
        "policy": {"max_attempts": 2, "delays_s": [3600]},
        "amd": {"wait": True},
        "connect_to": connect_to,
    }


@pytest.mark.parametrize("transport", ["udp", "tls"])
async def test_a_long_greeting_is_a_machine_hung_up_and_retried(
    transport: str, broker: Mosquitto, tmp_path: Path
) -> None:
    play = speech.write_wav(tmp_path / "greeting.wav", GREETING)
    pki = Pki(tmp_path / "pki")
    tls = KamailioTls(pki.issue("pbx", "IP:127.0.0.1,DNS:pbx.test"), pki.ca) if transport == "tls" else None
    with Kamailio(tmp_path / "kamailio", tls=tls) as kam:
        proxy = kam.tls_address if tls else kam.address
        phone_tls = (pki.issue("phone"), pki.ca) if tls else None
        with Baresip(tmp_path / "baresip", proxy, (NUMBER, "operator"), tls=phone_tls, audio_file=play) as phone:
            if tls:
                settings = _tls_settings(broker, tmp_path, kam, pki.ca, tls_server_name="pbx.test")
            else:
                settings = _settings(broker, tmp_path, kam)
            async with backend(broker.url) as b, gateway(settings, channels=()):
                await b.wait_for(lambda: kam.logged("registered sip:telgate@127.0.0.1"), timeout=10)
                connect_to = f"sip:operator@{proxy}" + (";transport=tls" if tls else "")
                await b.send("dial", _dial(connect_to))
                await b.wait_for(lambda: b.statuses("amd", "k")[-1:] == ["retry_scheduled"], timeout=20)
                events = b.unique("amd", "k")
                assert [e["status"] for e in events] == ["initial", "calling", "retry_scheduled"]
                last = events[-1]["signal"]
                assert last["answered_by"] == "machine_start" and last["outcome"] == "machine", last
                assert last["kind"] == "hangup"  # we hung up
                FIGURES.setdefault(f"machine_amd_ms/{transport}", []).append((last["amd_ms"], last["amd_cause"]))
                seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam.log))
                assert seen.attempts == 1 and seen.wire == 1
        # Kamailio's record of the call: our INVITE (and its digest retry), ACK, our BYE; no REFER
        requests = ledger.kamailio_requests(kam.log)[last["call_id"]]
        assert requests == ["INVITE", "INVITE", "ACK", "BYE"], requests
        if tls:
            assert kam.logged(f"from telgate to {NUMBER} over tls")
        text = phone.text()
        assert "aufile ---> PCMU" in text, text[-2000:]  # the greeting was its source
        # baresip: the call closed by the far end (libre reports a BYE received as "Connection reset by peer")
        assert "sip:telgate@127.0.0.1: session closed: Connection reset by peer" in text, text[-2000:]
        assert "transferring call" not in text  # a machine is never transferred: no REFER reached baresip
        assert not kam.logged(f"INVITE from {NUMBER} to operator")


async def test_a_person_says_hello_and_is_transferred(broker: Mosquitto, tmp_path: Path) -> None:
    play = speech.write_wav(tmp_path / "hello.wav", HELLO)
    with (
        Kamailio(tmp_path / "kamailio") as kam,
        Baresip(tmp_path / "baresip", kam.address, (NUMBER, "operator"), audio_file=play) as phone,
    ):
        async with backend(broker.url) as b, gateway(_settings(broker, tmp_path, kam), channels=()):
            await b.wait_for(lambda: kam.logged("registered sip:telgate@127.0.0.1"), timeout=10)
            connect_to = f"sip:operator@{kam.address}"
            await b.send("dial", _dial(connect_to))
            await b.wait_for(lambda: b.final("amd", "k") or "retry_scheduled" in b.statuses("amd", "k"), timeout=20)
            events = b.unique("amd", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            answer, end = events[2]["signal"], events[-1]["signal"]
            assert answer["answered_by"] == "human" and answer["amd_cause"] == "HUMAN", answer
            assert end["transfer"] == "ok", end
            FIGURES.setdefault("human_amd_ms", []).append(answer["amd_ms"])
            # the ledger: one INVITE of ours; baresip's INVITE to the operator (after our REFER) is not ours
            seen = await ledger.check(b, "voice", ledger.kamailio_invites(kam.log))
            assert seen.attempts == 1 and seen.wire == 1
    requests = ledger.kamailio_requests(kam.log)[answer["call_id"]]
    assert requests[:4] == ["INVITE", "INVITE", "ACK", "REFER"] and "BYE" in requests, requests
    assert kam.logged(f"authenticated INVITE from {NUMBER} to operator")  # baresip followed our REFER
    text = phone.text()
    assert f"transferring call {answer['call_id']} to '<{connect_to}>'" in text, text[-2000:]


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    if FIGURES:
        print(f"\namd/baresip figures: {FIGURES}")
