"""Voice on real trunks (issue 14): the dial string, the caller ID and several PBXs, checked by SIPp itself.

The SIPp scenarios match the Request-URI, From, P-Asserted-Identity and Privacy with `check_it` regexps, so
a wrong header fails the call inside SIPp (and SIPp exits 1); the tests read SIPp's message log as well, and
compare every peer's record with the events (the wire ledger).
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import backend, gateway, settings_for
from tests.support.relay import UdpRelay
from tests.support.sipp import Sipp

pytestmark = pytest.mark.integration


def _header(message: str, name: str) -> str | None:
    found = re.search(rf"^{name}\s*:\s*(.*)$", message, re.MULTILINE | re.IGNORECASE)
    return found[1].strip() if found else None


def _invites(pbx: Sipp) -> list[str]:
    return [m for m in pbx.messages() if "message received" in m.split("\n", 1)[0] and "\nINVITE " in m]


def _trunk(broker: Mosquitto, tmp_path: Path, pbx: str, **sip: Any) -> Any:
    return settings_for(broker.url, tmp_path, sip={"pbx": pbx, "local": "127.0.0.1:0", **sip})


async def test_national_dial_string_behind_a_prefix_with_the_campaign_caller_id_asserted(
    broker: Mosquitto, tmp_path: Path
) -> None:
    with Sipp("trunk_caller_id_486.xml", tmp_path / "sipp") as pbx:
        settings = _trunk(
            broker,
            tmp_path,
            pbx.address,
            dial_format="national",
            dial_prefix="9",
            user_phone=True,
            assert_identity=True,
        )
        async with backend(broker.url) as b, gateway(settings, channels=()):
            await b.send(
                "campaign",
                {"command_id": "c1", "campaign_id": "uk", "action": "create", "caller_id": "+49 30 123456"},
            )
            await b.send(
                "campaign", {"command_id": "c2", "campaign_id": "uk", "action": "start", "caller_name": "Acme"}
            )
            await b.send(
                "dial",
                {
                    "command_id": "d1",
                    "campaign_id": "uk",
                    "contact_id": "k",
                    "phone": "+44 20 7946 0958",
                    "policy": {"max_attempts": 1},
                },
            )
            await b.wait_for(lambda: b.final("uk", "k"), timeout=15)
            events = b.unique("uk", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "completed_without_answer"]
            assert events[-1]["signal"]["sip_code"] == 486 and events[-1]["phone"] == "+442079460958"
            seen = await ledger.check(
                b, "voice", ledger.sipp_invites(pbx), dialled={"+442079460958": "902079460958"}.__getitem__
            )
            assert seen.attempts == 1 and seen.wire == 1
        assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 10) == 0, pbx.errors()
    (invite,) = _invites(pbx)
    assert re.search(r"^INVITE sip:902079460958@127\.0\.0\.1:\d+;user=phone SIP/2\.0$", invite, re.MULTILINE)
    assert (_header(invite, "From") or "").startswith('"Acme" <sip:030123456@127.0.0.1;user=phone>;tag=')
    assert _header(invite, "P-Asserted-Identity") == '"Acme" <sip:030123456@127.0.0.1;user=phone>'
    assert _header(invite, "Privacy") is None


async def test_withheld_caller_id_of_the_dial_is_anonymous_asserted_and_private(
    broker: Mosquitto, tmp_path: Path
) -> None:
    with Sipp("withheld_caller_id_486.xml", tmp_path / "sipp") as pbx:
        settings = _trunk(broker, tmp_path, pbx.address, dial_format="+e164", dial_prefix="77#", assert_identity=True)
        async with backend(broker.url) as b, gateway(settings, channels=()):
            await b.send(
                "campaign",
                {"command_id": "c1", "campaign_id": "cz", "action": "create", "caller_id": "+420212345678"},
            )
            await b.send("campaign", {"command_id": "c2", "campaign_id": "cz", "action": "start"})
            await b.send(
                "dial",
                {
                    "command_id": "d1",
                    "campaign_id": "cz",
                    "contact_id": "k",
                    "phone": "601 234 567",  # national notation: gateway.default_region CZ
                    "caller_id": "+442079460958",
                    "caller_name": "Help desk",
                    "caller_id_withheld": True,
                    "policy": {"max_attempts": 1},
                },
            )
            await b.wait_for(lambda: b.final("cz", "k"), timeout=15)
            assert [e["status"] for e in b.unique("cz", "k")] == ["initial", "calling", "completed_without_answer"]
            seen = await ledger.check(
                b,
                "voice",
                ledger.sipp_invites(pbx, key=unquote),
                dialled={"+420601234567": "77#+420601234567"}.__getitem__,
            )
            assert seen.attempts == 1 and seen.wire == 1
        assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 10) == 0, pbx.errors()
    (invite,) = _invites(pbx)
    assert re.search(r"^INVITE sip:77%23\+420601234567@127\.0\.0\.1:\d+ SIP/2\.0$", invite, re.MULTILINE)
    assert (_header(invite, "From") or "").startswith('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=')
    assert _header(invite, "P-Asserted-Identity") == '"Help desk" <sip:+442079460958@127.0.0.1>'
    assert _header(invite, "Privacy") == "id"


async def test_a_caller_id_that_is_not_a_number_is_refused_and_dials_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    with Sipp("busy_486.xml", tmp_path / "sipp") as pbx:
        async with backend(broker.url) as b, gateway(_trunk(broker, tmp_path, pbx.address), channels=()):
            await b.send(
                "dial",
                {
                    "command_id": "d1",
                    "campaign_id": "v",
                    "contact_id": "k",
                    "phone": "+420601234567",
                    "caller_id": "ACME",
                },
            )
            await b.send(
                "campaign", {"command_id": "c1", "campaign_id": "v", "action": "start", "caller_id": "+420 12"}
            )
            await b.wait_for(lambda: len(b.results) == 2)
            for result in b.results:
                assert not result["accepted"] and result["error"]["code"] == "invalid_field"
                assert result["error"]["field"] == "caller_id", result
            seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
            assert seen.compared == 0 and seen.wire == 0  # no contact was created, nothing reached SIPp


def _received(pbx: Sipp, first_line: str) -> list[str]:
    return [m for m in pbx.messages() if "message received" in m.split("\n", 1)[0] and f"\n{first_line}" in m]


def _call_id(message: str) -> str | None:
    return _header(message, "Call-ID")


async def test_two_pbxs_new_calls_to_the_one_up_dialogs_stay_and_the_campaign_pauses_when_both_are_down(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """PBX 1 (priority 1, a SIPp behind a relay) answers A's call; then it stops answering OPTIONS while A's
    dialog goes on. A new call (B) goes to PBX 2; the campaign keeps running; A's transfer completes and its
    BYE goes to PBX 1, the PBX of its dialog. When PBX 2 dies too, the campaign pauses."""
    with (
        Sipp("answer_transfer_on_release.xml", tmp_path / "sipp1", calls=100_000) as first,
        Sipp("busy_486_checked.xml", tmp_path / "sipp2", calls=100_000) as second,
    ):
        relay = await UdpRelay(("127.0.0.1", first.port), hold_notify=True).start()
        try:
            settings = _trunk(
                broker,
                tmp_path,
                [relay.address, second.address],  # priority by order
                options_interval_s=0.2,
                connect_to="sip:agents@queue.example",
            )
            async with backend(broker.url) as b, gateway(settings, channels=()) as app:
                assert app.voice is not None

                def up(address: str) -> float | None:
                    return app.recorder.registry.get_sample_value("telgate_pbx_up", {"pbx": address})

                def paused() -> list[dict[str, Any]]:
                    return [c for c in b.campaigns if c["campaign_id"] == "two" and c["status"] == "paused"]

                await b.send("campaign", {"command_id": "c1", "campaign_id": "two", "action": "create"})
                await b.send("campaign", {"command_id": "c2", "campaign_id": "two", "action": "start"})
                await b.send(
                    "dial", {"command_id": "da", "campaign_id": "two", "contact_id": "a", "phone": "+420601234561"}
                )
                await b.wait_for(lambda: b.statuses("two", "a")[-1:] == ["call_in_progress"] and bool(relay.held))

                relay.drop_options = True  # PBX 1 stops answering keepalives; A's dialog with it goes on
                await b.wait_for(lambda: up(relay.address) == 0)
                assert up(second.address) == 1 and app.voice.state == "up"
                await b.send(
                    "dial",
                    {
                        "command_id": "db",
                        "campaign_id": "two",
                        "contact_id": "b",
                        "phone": "+420601234562",
                        "policy": {"max_attempts": 1},
                    },
                )
                await b.wait_for(lambda: b.final("two", "b"))
                assert [e["status"] for e in b.unique("two", "b")] == ["initial", "calling", "completed_without_answer"]
                assert not paused()  # one PBX is still up: the campaign runs on

                relay.release()  # A's transfer succeeds: telgate leaves the call with BYE, to PBX 1
                await b.wait_for(lambda: b.final("two", "a"))
                events = b.unique("two", "a")
                assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
                assert events[-1]["signal"]["transfer"] == "ok" and events[-1]["signal"]["sip_code"] == 200

                assert second.proc is not None
                second.proc.kill()  # now both are down
                await b.wait_for(lambda: bool(paused()))
                assert paused()[-1]["reason"].startswith("pbx_down: all 2 PBXs down"), paused()
                assert app.voice.state == "down" and up(second.address) == 0
                seen = await ledger.check(b, "voice", ledger.sipp_invites(first, second))
                assert seen.attempts == 2 and seen.wire == 2
        finally:
            relay.close()
    # each PBX's own record: A's INVITE and its BYE at PBX 1, B's INVITE (and no BYE) at PBX 2
    invites_1, byes_1 = _received(first, "INVITE "), _received(first, "BYE ")
    invites_2, byes_2 = _received(second, "INVITE "), _received(second, "BYE ")
    assert [("420601234561@" in m) for m in invites_1] == [True]
    assert [("420601234562@" in m) for m in invites_2] == [True]
    assert len(byes_1) == 1 and _call_id(byes_1[0]) == _call_id(invites_1[0]) and not byes_2
    assert _received(first, "REFER ") and relay.dropped > 0
    for pbx in (first, second):
        assert "regexp" not in pbx.errors().lower(), pbx.errors()  # SIPp's own checks of the Request-URI


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[sip]\npbx = "10.0.0.5:5060"\ndial_format = "E.164"\n', "sip.dial_format"),
        ('[sip]\npbx = "10.0.0.5:5060"\ndial_prefix = "9-"\n', "sip.dial_prefix"),
        ('[sip]\npbx = ["10.0.0.5:5060", {address = "10.0.0.6", weight = 2}]\n', "sip.pbx"),
        ('[sip]\npbx = [{address = "10.0.0.5:99999"}]\n', "sip.pbx"),
        # what is not per PBX (yet) says so: one transport and one set of TLS files for every PBX
        ('[sip]\ntransport = "tls"\npbx = ["10.0.0.5", {address = "10.0.0.6", transport = "udp"}]\n', "sip.pbx"),
        ('[sip]\ntransport = "tls"\npbx = [{address = "10.0.0.5", ca_file = "/etc/ca.pem"}]\n', "sip.pbx"),
        ('[sip]\npbx = [{address = "10.0.0.5", tls_server_name = "pbx.example"}]\n', "tls_server_name"),
        ('[sip]\ntransport = "tls"\npbx = [{address = "10.0.0.5", tls_server_name = "a b"}]\n', "sip.pbx"),
    ],
)
def test_bad_trunk_configuration_exits_2_naming_the_key(toml: str, key: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "telgate.toml"
    config.write_text(toml)
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 2 and key in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_check_config_prints_the_trunk(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    config = tmp_path / "telgate.toml"
    config.write_text(
        '[sip]\npbx = ["10.0.0.5:5060", "10.0.0.6:5060"]\ndial_format = "national"\ndial_prefix = "9"\n'
        "user_phone = true\nassert_identity = true\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--config", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    sip = json.loads(out.stdout)["sip"]
    assert sip["pbx"] == [
        {"address": "10.0.0.5:5060", "priority": 1, "tls_server_name": None},
        {"address": "10.0.0.6:5060", "priority": 2, "tls_server_name": None},
    ]
    assert (sip["dial_format"], sip["dial_prefix"], sip["user_phone"], sip["assert_identity"]) == (
        "national",
        "9",
        True,
        True,
    )


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_several_pbxs_over_tcp_and_tls_load(transport: str, tmp_path: Path) -> None:
    """Issue 14: `sip.pbx` as a list works over every transport; over TLS each PBX may name the host name its
    certificate carries (else `sip.tls_server_name`, else its host)."""
    from gateway.config import load_settings

    second: dict[str, Any] = {"address": "10.0.0.6", "priority": 2}
    if transport == "tls":
        second["tls_server_name"] = "sbc2.carrier.example"
    sip = load_settings(None, sip={"pbx": ["10.0.0.5", second], "transport": transport}).sip
    assert [(e.address, e.priority, e.tls_server_name) for e in sip.pbxs] == [
        ("10.0.0.5", 1, None),
        ("10.0.0.6", 2, second.get("tls_server_name")),
    ]


def test_the_documented_trunk_configuration_loads_and_builds_the_invite_it_shows() -> None:
    import tomllib

    from gateway.config import load_settings
    from gateway.domain.phones import international
    from sip.call import Call, UacConfig
    from sip.identity import Caller

    text = (Path(__file__).resolve().parents[2] / "docs" / "voice.md").read_text()
    part = text[text.index("## On a carrier trunk") :]
    toml = re.search(r"```toml\n(.*?)```", part, re.DOTALL)
    invite = re.search(r"```\n(INVITE .*?)```", part, re.DOTALL)
    assert toml is not None and invite is not None
    sip = load_settings(None, sip=tomllib.loads(toml[1])["sip"]).sip
    cfg = UacConfig(
        "192.0.2.1",
        5070,
        sip.pbxs[0].address,
        dial_format=sip.dial_format,
        dial_prefix=sip.dial_prefix,
        user_phone=sip.user_phone,
        assert_identity=sip.assert_identity,
    )
    caller = Caller(international("+442079460111"), "Acme Ltd")
    built = Call(cfg, "+442079460958", "readme", 30.0, caller=caller)._invite_request().encode().decode()
    for line in invite[1].strip().splitlines():
        assert line.replace("…", "") in built, (line, built)


def test_the_documented_tls_trunk_with_two_pbxs_loads_and_builds_the_invite_it_shows() -> None:
    import tomllib

    from gateway.config import load_settings
    from gateway.domain.phones import international
    from sip.call import Call, UacConfig
    from sip.identity import Caller

    text = (Path(__file__).resolve().parents[2] / "docs" / "voice.md").read_text()
    part = text[text.index("## TLS to the PBX") :]
    toml = re.search(r"```toml\n(.*?)```", part, re.DOTALL)
    invite = re.search(r"```\n(INVITE .*?)```", part, re.DOTALL)
    assert toml is not None and invite is not None
    sip_keys = tomllib.loads(toml[1])["sip"]
    for key in ("password_file", "ca_file"):  # files on the deployment's machine (read at load)
        sip_keys.pop(key)
    sip = load_settings(None, sip=sip_keys).sip
    assert sip.transport == "tls" and [p.address for p in sip.pbxs] == ["sbc1.carrier.example", "sbc2.carrier.example"]
    host, _, port = (sip.public_address or "").partition(":")
    cfg = UacConfig(
        host,
        int(port),
        sip.pbxs[0].address,
        transport=sip.transport.upper(),
        dial_format=sip.dial_format,
        assert_identity=sip.assert_identity,
    )
    caller = Caller(international("+442079460111"), "Acme Ltd")
    built = Call(cfg, "+442079460958", "readme", 30.0, caller=caller)._invite_request().encode().decode()
    for line in invite[1].strip().splitlines():
        for piece in line.split("…"):
            assert piece in built, (line, built)


async def test_with_two_pbxs_telgate_registers_with_each(broker: Mosquitto, tmp_path: Path) -> None:
    with (
        Sipp("register_401.xml", tmp_path / "sipp1") as first,
        Sipp("register_401.xml", tmp_path / "sipp2") as second,
    ):
        settings = _trunk(
            broker,
            tmp_path,
            [first.address, second.address],
            register=True,
            register_expires_s=60,
            username="telgate",
            password="secret",
        )
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            assert app.voice is not None and app.voice.ua.registration is not None
            registrations = [app.voice.ua.registration, *(r for r, _ in app.voice.ua.more_registrations)]
            assert len(registrations) == 2

            def done() -> bool:
                return all(r.registered and r.cseq >= 3 for r in registrations)

            await b.wait_for(done, timeout=15)
            for pbx in (first, second):  # each SIPp saw its scenario through: challenge, digest, refresh
                assert pbx.proc is not None and await asyncio.to_thread(pbx.proc.wait, 10) == 0, pbx.errors()
                assert len(_received(pbx, "REGISTER ")) >= 3
            seen = await ledger.check(b, "voice", ledger.sipp_invites(first, second))
            assert seen.compared == 0 and seen.wire == 0  # nothing was dialled
