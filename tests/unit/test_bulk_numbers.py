"""A bulk command's numbers normalised beforehand (gateway/bus/intake.py hands them from a thread of their
own): `execute` takes each contact's number from them, and normalises itself any phone they lack; the
numbers are phones.normalise's, the function the blacklist is kept with."""

from __future__ import annotations

import json
from typing import Any

from gateway.contract.wire import parse_command
from gateway.domain.phones import normalise, normalise_all
from gateway.domain.policy import Policy
from gateway.domain.statuses import Channel
from gateway.engine.commands import CommandContext, execute
from gateway.engine.engine import Engine


def test_normalise_all_is_normalise_for_each_number() -> None:
    raws = ["+420 601 234 567", "601234568", "not a number", "", "+44 20 7946 0958", "+420601234567"]
    assert normalise_all(raws, "CZ") == {raw: normalise(raw, "CZ") for raw in raws}


async def test_execute_takes_the_numbers_given_and_normalises_the_rest(engine: Engine) -> None:
    ctx = CommandContext("CZ", Policy(), frozenset({Channel.VOICE}), ring_timeout_s=30)
    contacts = [
        {"contact_id": "given", "phone": "601 234 567"},
        {"contact_id": "refused-upstream", "phone": "601 234 568"},  # valid, but the mapping says not
        {"contact_id": "missing", "phone": "+420 601 234 569"},
    ]
    cmd: Any = parse_command(
        "dial", json.dumps({"command_id": "b1", "campaign_id": "c", "contacts": contacts}).encode()
    )
    numbers = {"601 234 567": "+420601234567", "601 234 568": None}
    result = await engine.execute(lambda unit: execute(unit, cmd, ctx, "gw", None, None, numbers))
    assert result.accepted and result.contacts_accepted == 3 and result.contacts_invalid == 1
    states = await engine.store.run(
        lambda t: {k: t.get_contact(("c", k)) for k in ("given", "refused-upstream", "missing")}
    )
    assert states["given"].phone == "+420601234567" and states["given"].status == "initial"
    assert states["refused-upstream"].status == "invalid_record"
    assert states["missing"].phone == "+420601234569" and states["missing"].status == "initial"
