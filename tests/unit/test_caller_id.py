"""Caller ID per campaign and per dial: validation, precedence (dial > campaign > sip.from_user), bad input."""

from __future__ import annotations

import asyncio
import functools
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.channels.voice import sip_caller
from gateway.config import ConfigError, load_settings
from gateway.contract.wire import Rejection, parse_command
from gateway.domain.decide import decide
from gateway.domain.policy import Policy
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import CallerId, ContactState
from gateway.domain.statuses import Channel
from gateway.engine.commands import CommandContext, execute
from gateway.engine.dispatcher import Dispatcher
from gateway.engine.engine import Engine
from sip.identity import Caller
from tests.support.scripted import ScriptedPort

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def parse(kind: str, payload: dict[str, Any]) -> Any:
    return parse_command(kind, json.dumps(payload).encode())


def rejected(kind: str, payload: dict[str, Any]) -> tuple[str, str | None, str]:
    with pytest.raises(Rejection) as info:
        parse(kind, payload)
    return info.value.error.code, info.value.error.field, info.value.error.message


DIAL = {"command_id": "d", "campaign_id": "c", "contact_id": "k", "phone": "+420601234567"}


def test_a_caller_id_is_normalised_to_e164() -> None:
    cmd = parse("dial", {**DIAL, "caller_id": "+44 20 7946 0958", "caller_name": "Acme", "caller_id_withheld": False})
    (entry,) = cmd.entries()
    assert (entry.caller_id, entry.caller_name, entry.caller_id_withheld) == ("+442079460958", "Acme", False)
    camp = parse("campaign", {"command_id": "k", "campaign_id": "c", "action": "create", "caller_id": "+420212345678"})
    assert camp.caller_id == "+420212345678"


@pytest.mark.parametrize(
    ("kind", "payload", "field"),
    [
        ("dial", {**DIAL, "caller_id": "hello"}, "caller_id"),
        ("dial", {**DIAL, "caller_id": "0212345678"}, "caller_id"),  # national: whose country?
        ("dial", {**DIAL, "caller_id": "+1"}, "caller_id"),
        ("dial", {**DIAL, "caller_id": "+999 1234567"}, "caller_id"),  # no such country code
        ("dial", {**DIAL, "caller_id": 420212345678}, "caller_id"),  # a JSON number lost its +
        ("dial", {**DIAL, "caller_name": "two\r\nlines"}, "caller_name"),
        ("dial", {**DIAL, "caller_id_withheld": "yes please"}, "caller_id_withheld"),
        (
            "dial",
            {
                "command_id": "b",
                "campaign_id": "c",
                "contacts": [
                    {"contact_id": "a", "phone": "+420601234567"},
                    {"contact_id": "b", "phone": "+420601234568", "caller_id": "12 three"},
                ],
            },
            "contacts[1].caller_id",
        ),
        (
            "campaign",
            {"command_id": "k", "campaign_id": "c", "action": "start", "caller_id": "sip:me@pbx"},
            "caller_id",
        ),
    ],
)
def test_a_caller_id_that_is_not_a_number_is_refused_naming_the_field(
    kind: str, payload: dict[str, Any], field: str
) -> None:
    code, where, message = rejected(kind, payload)
    assert code == "invalid_field" and where == field, message


def test_the_dial_wins_over_the_campaign_field_by_field() -> None:
    state = ContactState(campaign_id="c", contact_id="k", channel=Channel.VOICE, phone="+420601234567")
    state = decide(state, Signal(Kind.CREATE, phone="+420601234567"), NOW).state
    campaign = CallerId(number="+420212345678", name="Acme", withheld=False)
    for own, expected in [
        (None, campaign),
        (CallerId(number="+442079460958"), CallerId(number="+442079460958", name="Acme", withheld=False)),
        (CallerId(withheld=True), CallerId(number="+420212345678", name="Acme", withheld=True)),
    ]:
        mine = state.model_copy(update={"caller": own})
        calling = decide(mine, Signal(Kind.DIAL_DUE, caller=campaign), NOW).state
        assert calling.status == "calling" and calling.attempt_caller == expected
    # no caller ID anywhere: the attempt has none (sip.from_user)
    assert decide(state, Signal(Kind.DIAL_DUE), NOW).state.attempt_caller is None
    assert sip_caller(None) is None
    assert sip_caller(CallerId(number="+420212345678", withheld=None)) == Caller("+420212345678", None, False)


async def test_each_attempt_takes_the_campaign_caller_id_it_has_when_it_is_dialled(engine: Engine) -> None:
    """The campaign's caller ID is read at every dial, so a change applies to the next attempts; a dial's
    own caller ID (or a bulk entry's) wins over it."""
    ctx = CommandContext("CZ", Policy(), frozenset({Channel.VOICE}), ring_timeout_s=30)

    async def run(kind: str, payload: dict[str, Any]) -> Any:
        cmd = parse(kind, payload)
        return await engine.execute(lambda unit: execute(unit, cmd, ctx, "gw", None, None))

    port = ScriptedPort(engine, Channel.VOICE)
    engine.ports[Channel.VOICE] = port
    dispatcher = Dispatcher(engine, port)
    await run("campaign", {"command_id": "c1", "campaign_id": "c", "action": "create", "caller_id": "+420212345678"})
    await run("campaign", {"command_id": "c2", "campaign_id": "c", "action": "start", "caller_name": "Acme"})
    result = await run(
        "dial",
        {
            "command_id": "d1",
            "campaign_id": "c",
            "caller_id_withheld": True,
            "policy": {"max_attempts": 2, "delays_s": [0]},
            "contacts": [  # the scripted PBX answers ...1 busy: a retry, due at once
                {"contact_id": "plain", "phone": "+420601234561", "caller_id_withheld": False},
                {"contact_id": "own", "phone": "+420601234571", "caller_id": "+442079460958"},
            ],
        },
    )
    assert result.accepted and result.contacts_accepted == 2

    async def contacts() -> dict[str, ContactState]:
        found = await engine.store.run(lambda t: {k: t.get_contact(("c", k)) for k in ("plain", "own")})
        return {k: c for k, c in found.items() if c is not None}

    async def dial_when(status: str) -> dict[str, CallerId | None]:
        async with asyncio.timeout(20):  # a bound on a hang, not a timed assertion
            while any(c.status != status for c in (await contacts()).values()):
                await asyncio.sleep(0.01)
        await engine.execute(functools.partial(dispatcher._turn, room=10))
        return {k: c.attempt_caller for k, c in (await contacts()).items()}

    first = await dial_when("initial")
    assert first["plain"] == CallerId(number="+420212345678", name="Acme", withheld=False)
    assert first["own"] == CallerId(number="+442079460958", name="Acme", withheld=True)
    await run("campaign", {"command_id": "c3", "campaign_id": "c", "action": "resume", "caller_id": "+420296000000"})
    second = await dial_when("retry_scheduled")  # the busy first attempts are due again
    assert second["plain"] == CallerId(number="+420296000000", name="Acme", withheld=False)
    assert second["own"] == CallerId(number="+442079460958", name="Acme", withheld=True)
    assert sorted(port.started) == [("c", "own", 1), ("c", "own", 2), ("c", "plain", 1), ("c", "plain", 2)]
    async with asyncio.timeout(20):  # the second busy attempts end: nothing is left running
        while any(c.status != "completed_without_answer" for c in (await contacts()).values()):
            await asyncio.sleep(0.01)
    camp = await engine.store.run(lambda t: t.get_campaign("c"))
    assert camp is not None and camp.caller == CallerId(number="+420296000000", name="Acme")


@pytest.mark.parametrize(
    ("sip", "key"),
    [
        ({"dial_format": "E.164"}, "sip.dial_format"),
        ({"dial_format": "international"}, "sip.dial_format"),
        ({"dial_prefix": "9,"}, "sip.dial_prefix"),
        ({"user_phone": "sometimes"}, "sip.user_phone"),
        ({"pbx": []}, "sip.pbx"),
        ({"pbx": ["10.0.0.1:5060", "10.0.0.1:5060"]}, "sip.pbx"),
        ({"pbx": ["10.0.0.1:70000"]}, "sip.pbx"),
        ({"pbx": [{"address": "10.0.0.1:5060", "weight": 1}]}, "sip.pbx"),
        ({"pbx": [{"address": "10.0.0.1:5060", "priority": -1}]}, "sip.pbx"),
        ({"pbx": [{"priority": 1}]}, "sip.pbx"),
        ({"pbx": ["10.0.0.1:5060", {"address": "10.0.0.2:5060", "transport": "tcp"}], "transport": "tcp"}, "sip.pbx"),
        ({"pbx": [{"address": "10.0.0.1:5060", "tls_server_name": "pbx.example"}], "transport": "tcp"}, "sip.pbx"),
    ],
)
def test_bad_trunk_settings_name_the_key(sip: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, sip={"pbx": "10.0.0.1:5060", **sip})
    assert info.value.key == key, info.value


def test_trunk_settings_and_several_pbxs() -> None:
    sip = load_settings(None, sip={"pbx": "10.0.0.1:5060"}).sip
    assert (sip.dial_format, sip.dial_prefix, sip.user_phone, sip.assert_identity) == ("e164", "", False, False)
    assert [(p.address, p.priority) for p in sip.pbxs] == [("10.0.0.1:5060", 1)]
    listed = load_settings(None, sip={"pbx": ["b:5060", "a:5060"], "dial_format": "+e164", "dial_prefix": "00*1#"})
    assert [(p.address, p.priority) for p in listed.sip.pbxs] == [("b:5060", 1), ("a:5060", 2)]
    tables = load_settings(None, sip={"pbx": [{"address": "a:5060", "priority": 2}, {"address": "b"}]}).sip
    assert [(p.address, p.priority) for p in tables.pbxs] == [("b", 1), ("a:5060", 2)]
    assert tables.active


def test_pbx_from_the_environment_as_a_string_or_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELGATE_SIP__PBX", "10.0.0.1:5060")
    assert [p.address for p in load_settings().sip.pbxs] == ["10.0.0.1:5060"]
    monkeypatch.setenv("TELGATE_SIP__PBX", '["10.0.0.1:5060", {"address": "10.0.0.2:5060", "priority": 1}]')
    assert [(p.address, p.priority) for p in load_settings().sip.pbxs] == [("10.0.0.1:5060", 1), ("10.0.0.2:5060", 1)]


async def test_a_dial_that_names_no_caller_id_or_policy_gets_none_and_the_default_with_the_ring_timeout(
    engine: Engine,
) -> None:
    """The paths that build no models (sixth session): no caller ID anywhere leaves the contact's own
    caller None; a caller name alone still makes one; a dial without a policy gets the default with the
    SIP ring timeout (made once per context), one with a policy gets its own with the ring timeout too."""
    ctx = CommandContext("CZ", Policy(max_attempts=3), frozenset({Channel.VOICE}), ring_timeout_s=25)
    base = {"campaign_id": "n", "phone": "+420601234561"}
    dials: list[dict[str, Any]] = [
        {"command_id": "a", "contact_id": "none", **base},
        {"command_id": "b", "contact_id": "named", "caller_name": "Acme", **base},
        {"command_id": "c", "contact_id": "own-policy", "policy": {"max_attempts": 1}, **base},
    ]
    for payload in dials:
        cmd = parse("dial", payload)
        result = await engine.execute(lambda unit, cmd=cmd: execute(unit, cmd, ctx, "gw", None, None))
        assert result.accepted, result
    found = await engine.store.run(lambda t: {k: t.get_contact(("n", k)) for k in ("none", "named", "own-policy")})
    none, named, own = found["none"], found["named"], found["own-policy"]
    assert none is not None and named is not None and own is not None
    assert none.caller is None
    assert named.caller == CallerId(name="Acme")
    assert none.policy == Policy(max_attempts=3, ring_timeout_s=25) == ctx.voice_policy
    assert ctx.voice_policy is ctx.voice_policy
    assert own.policy == Policy(max_attempts=1, ring_timeout_s=25)
