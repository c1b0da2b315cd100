"""The intake's pure parts are total (issue 21, DESIGN habit 15): RFC 8259 JSON, the Response Topic, a
command whose handling raises, and the gateway id kept with the data dir."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.cluster import identity
from gateway.config import Settings
from gateway.contract.strict_json import MAX_DEPTH, NotJson, loads
from gateway.contract.wire import CommandResult, Rejection, check_response_topic, parse_command
from gateway.engine.commands import INTERNAL_ERROR, fail_command
from gateway.engine.engine import Engine, Unit


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "nested deeper than 32"),
        (b'{"a": 1e999}', "outside a double's range"),
        (b'{"a": -1e400}', "outside a double's range"),
        (b'{"a": ' + b"9" * 400 + b"}", "outside a double's range"),
        (b'{"a": NaN}', "NaN is not a JSON value"),
        (b'{"a": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"a": {"b": "\\ud800"}}', "the string at a.b is not Unicode scalar values"),
        (b'{"\\udc00": 1}', "not Unicode scalar values"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8 at byte 0"),
        (b'{"a": "\xed\xa0\x80"}', "not UTF-8 at byte 7"),  # an encoded surrogate
        (b'{"a": 1', "Expecting"),
    ],
)
def test_what_is_not_rfc8259_json_is_refused_naming_what(payload: bytes, says: str) -> None:
    with pytest.raises(NotJson, match=None) as info:
        loads(payload)
    assert says in str(info.value)


def test_what_rfc8259_allows_is_read() -> None:
    assert loads(b'{"a": "\\ud83d\\ude00", "b": 1.5e308, "c": "[[[", "d": "a\\u0000b"}') == {
        "a": "😀",
        "b": 1.5e308,
        "c": "[[[",
        "d": "a\x00b",
    }
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(deep) is not None
    with pytest.raises(NotJson):
        loads("[" + deep + "]")
    # brackets inside strings are not nesting, and `"` escaped inside them does not end them
    assert loads(json.dumps({"x": "[" * 100, "y": '\\"' + "{" * 100}))["x"] == "[" * 100


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_value_or_a_refusal(data: bytes) -> None:
    with contextlib.suppress(NotJson):  # anything else fails the test
        loads(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["dial", "send", "campaign", "explode"]))
def test_any_payload_is_a_command_or_a_rejection(data: bytes, kind: str) -> None:
    try:
        parse_command(kind, data)
    except Rejection as rej:
        assert rej.error.code
        CommandResult(command_id=rej.command_id, accepted=False, error=rej.error, gateway_id="g",
                      occurred_at="2026-01-01T00:00:00Z").model_dump_json()  # fmt: skip


@pytest.mark.parametrize(
    ("topic", "bad"),
    [
        (None, False),
        ("crm/replies/42", False),
        ("telgate/v1/replies/client-1", False),
        ("other/v1/evt/contact", False),  # another tenant's prefix is the broker's ACL to refuse
        ("crm/#", True),
        ("crm/+/x", True),
        ("$SYS/broker", True),
        ("", True),
        ("crm/a\x00b", True),
        ("crm/\x85", True),
        ("telgate/v1/evt/contact/voice/c/k", True),
        ("telgate/v1/evt/command", True),
        ("telgate/v1/evt", True),
        ("telgate/v1/gateways/gw-1/status", True),
        ("x" * 70_000, True),
    ],
)
def test_a_response_topic_outside_what_a_backend_may_name_is_refused(topic: str | None, bad: bool) -> None:
    assert (check_response_topic(topic, "telgate") is not None) is bad


def test_the_fields_that_reach_a_wire_are_checked_by_grammar() -> None:
    base: dict[str, Any] = {"command_id": "c", "campaign_id": "x", "contact_id": "k", "phone": "+420601234567"}
    for field, value in (
        ("connect_to", "sip:100@pbx\r\nX-Evil: 1"),
        ("connect_to", "sip:100@pbx?X-Evil=1"),
        ("connect_to", "http://example.com"),
        ("caller_name", "Eve\r\nX: 1"),
        ("prompt", "greeting\n"),
    ):
        with pytest.raises(Rejection) as info:
            parse_command("dial", json.dumps({**base, field: value}).encode())
        assert info.value.error.field == field
        assert info.value.command_id == "c"
    send = {**base, "template": {"name": "t", "language": "en", "components": [
        {"type": "body", "parameters": [{"type": "text", "text": "two\nlines"}]}]}}  # fmt: skip
    with pytest.raises(Rejection) as info:
        parse_command("send", json.dumps(send).encode())
    assert info.value.error.field == "template.components"
    assert parse_command("dial", json.dumps({**base, "connect_to": "sip:agents@queue.example;transport=tls"}).encode())
    assert parse_command("dial", json.dumps({**base, "connect_to": "tel:+420212345678"}).encode())


def test_an_unreadable_command_id_is_not_echoed() -> None:
    with pytest.raises(Rejection) as info:
        parse_command("dial", json.dumps({"command_id": "a\nb" * 1000, "campaign_id": "x"}).encode())
    assert info.value.command_id is None


async def test_work_that_raises_commits_its_fallback_and_the_rest_of_the_batch(engine: Engine) -> None:
    from gateway.contract.wire import DialCommand

    cmd = DialCommand(command_id="boom", campaign_id="c", contact_id="k", phone="+420601234567")

    def explode(unit: Unit) -> CommandResult:
        unit.blacklist("+420601234567", True)  # written, then rolled back with the failure
        raise RecursionError("a bug")

    def fallback(unit: Unit, exc: BaseException) -> CommandResult:
        return fail_command(unit, exc, cmd, "gw", None, None)

    failing = engine.submit(explode, None, fallback)
    after = engine.submit(lambda unit: unit.read.get_command("boom"))
    result = await failing
    assert result.error is not None and result.error.code == INTERNAL_ERROR and result.command_id == "boom"
    assert await after is not None  # the rest of the batch ran, after the fallback was written
    stored = await engine.store.read(lambda txn: txn.get_command("boom"))
    assert stored is not None and json.loads(stored)["error"]["code"] == INTERNAL_ERROR  # a repeat gets it
    assert not await engine.store.read(lambda txn: txn.is_blacklisted("+420601234567"))  # nothing of the failure


def test_the_default_id_is_made_once_and_an_earlier_one_is_remembered(tmp_path: Path) -> None:
    def settings(**gateway: str) -> Settings:
        return Settings(gateway={"data_dir": str(tmp_path), **gateway})  # type: ignore[arg-type]

    first, earlier = identity.resolve(settings())
    assert first.gateway.id.startswith("gw-") and earlier == ()
    again, earlier = identity.resolve(settings())
    assert again.gateway.id == first.gateway.id and earlier == ()
    renamed, earlier = identity.resolve(settings(id="gw-new"))
    assert renamed.gateway.id == "gw-new"
    assert earlier == (identity.Earlier(first.gateway.id, f"telgate-{first.gateway.id}"),)
    _, still = identity.resolve(settings(id="gw-new"))  # not ended yet: adopted at the next start too
    assert still == earlier
    identity.forget(tmp_path, earlier[0])
    assert identity.resolve(settings(id="gw-new"))[1] == ()
