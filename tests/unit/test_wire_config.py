"""Command validation names the field; configuration names the key; phones normalise to E.164."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_settings
from gateway.contract.wire import (
    MAX_BULK_PAYLOAD_BYTES,
    MAX_PAYLOAD_BYTES,
    ContactStatusEvent,
    DialCommand,
    Rejection,
    SendCommand,
    SignalEvidence,
    encode_contact_event,
    parse_command,
)
from gateway.domain.phones import mask, normalise
from gateway.domain.statuses import Channel, Status
from gateway.engine.dispatcher import TokenBucket
from gateway.engine.ids import uuid7
from tests.support.certs import Pki

GOOD = {"command_id": "c1", "campaign_id": "camp", "contact_id": "k1", "phone": "+420601234567"}


def reject(kind: str, payload: bytes | dict[str, object]) -> tuple[str, str | None]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    with pytest.raises(Rejection) as info:
        parse_command(kind, body)
    return info.value.error.code, info.value.error.field


def test_good_dial() -> None:
    cmd = parse_command("dial", json.dumps(GOOD).encode())
    assert isinstance(cmd, DialCommand) and cmd.mode == "progressive"


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        (b"not json", "invalid_json", None),
        (b"[1,2]", "invalid_json", None),
        ({**GOOD, "command_id": "a/b"}, "invalid_field", "command_id"),
        ({**GOOD, "contact_id": "x+y"}, "invalid_field", "contact_id"),
        ({**GOOD, "campaign_id": "c#"}, "invalid_field", "campaign_id"),
        ({k: v for k, v in GOOD.items() if k != "contact_id"}, "missing_field", "contact_id"),
        ({**GOOD, "surprise": 1}, "unknown_field", "surprise"),
        ({**GOOD, "mode": "psychic"}, "invalid_field", "mode"),
        ({**GOOD, "policy": {"max_attempts": "many"}}, "invalid_field", "policy.max_attempts"),
        ({**GOOD, "meta": {"x": "y" * 5000}}, "invalid_field", "meta"),
        ({**GOOD, "kind": "send"}, "invalid_field", "kind"),
    ],
)
def test_bad_dial_names_field(payload: bytes | dict[str, object], code: str, field: str | None) -> None:
    assert reject("dial", payload) == (code, field)


def test_unknown_kind_and_oversize() -> None:
    assert reject("explode", GOOD) == ("unknown_kind", "kind")
    assert reject("dial", b"{" + b" " * MAX_PAYLOAD_BYTES + b"}")[0] == "payload_too_large"


BULK = {"command_id": "b1", "campaign_id": "camp", "mode": "predictive"}


def entries(n: int) -> list[dict[str, object]]:
    return [{"contact_id": f"k{i}", "phone": f"+420601{i:06d}"} for i in range(n)]


def test_bulk_dial_and_send_share_the_command_fields() -> None:
    cmd = parse_command("dial", json.dumps({**BULK, "contacts": entries(1000), "prompt": "hi.wav"}).encode())
    assert isinstance(cmd, DialCommand) and len(cmd.entries()) == 1000 and cmd.mode == "predictive"
    send = {**BULK, "template": {"name": "t", "language": "cs"}, "contacts": entries(3)}
    del send["mode"]
    wa = parse_command("send", json.dumps(send).encode())
    assert isinstance(wa, SendCommand) and [e.contact_id for e in wa.entries()] == ["k0", "k1", "k2"]
    single = parse_command("dial", json.dumps(GOOD).encode())
    assert isinstance(single, DialCommand) and [e.phone for e in single.entries()] == ["+420601234567"]


def test_a_malformed_bulk_names_the_entry_and_the_field() -> None:
    contacts = entries(1000)
    del contacts[516]["phone"]  # the 517th entry
    assert reject("dial", {**BULK, "contacts": contacts}) == ("missing_field", "contacts[516].phone")
    contacts = entries(1000)
    contacts[9]["contact_id"] = "no/slashes"
    assert reject("dial", {**BULK, "contacts": contacts}) == ("invalid_field", "contacts[9].contact_id")
    assert reject("dial", {**BULK, "contacts": entries(1001)}) == ("invalid_field", "contacts")
    assert reject("dial", {**BULK, "contacts": []}) == ("invalid_field", "contacts")
    assert reject("dial", {**BULK, "contacts": "everyone"}) == ("invalid_field", "contacts")
    assert reject("dial", {**BULK, "contacts": entries(2), "contact_id": "k"}) == ("invalid_field", "contacts")
    assert reject("dial", {**BULK, "contacts": [{"contact_id": "k", "phone": "1", "mode": "x"}]}) == (
        "unknown_field",
        "contacts[0].mode",
    )
    huge = {
        **BULK,
        "contacts": [{"contact_id": f"k{i}", "phone": "1" * 60, "meta": {"x": "y" * 1100}} for i in range(900)],
    }
    body = json.dumps(huge).encode()
    assert len(body) > MAX_BULK_PAYLOAD_BYTES
    assert reject("dial", body)[0] == "payload_too_large"


def test_phone_normalisation() -> None:
    assert normalise("601 234 567", "CZ") == "+420601234567"
    assert normalise("+420 601 234 567", "CZ") == "+420601234567"
    assert normalise("", "CZ") is None
    assert normalise("12", "CZ") is None
    assert normalise("call me maybe", "CZ") is None
    assert mask("+420601234567") == "+420******567"


def test_config_file_env_and_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = tmp_path / "t.toml"
    cfg.write_text(f'[bus]\nurl = "mqtt://10.0.0.1:1884"\npassword_file = "{secret}"\n[gateway]\nid = "gw-9"\n')
    monkeypatch.setenv("TELGATE_BUS__TOPIC_PREFIX", "acme")
    s = load_settings(cfg)
    assert s.bus.url == "mqtt://10.0.0.1:1884" and s.bus.topic_prefix == "acme"
    assert s.bus.password is not None and s.bus.password.get_secret_value() == "s3cret"
    assert s.masked()["bus"]["password"] == "********"
    assert "s3cret" not in json.dumps(s.masked())
    assert s.client_id == "telgate-gw-9"


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text("[bus]\nurll = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert info.value.key == "bus.urll"
    cfg.write_text("[sip]\nmax_cps = -1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert info.value.key == "sip.max_cps"


def _tls(**sip: str) -> dict[str, dict[str, str]]:
    return {"sip": {"pbx": "pbx.example", "transport": "tls", **sip}}


def test_tls_files_are_read_at_startup_and_a_bad_one_names_its_key(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    mine, other = pki.issue("telgate"), pki.issue("other")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    unreadable = tmp_path / "absent.pem"
    good = load_settings(None, **_tls(ca_file=str(pki.ca), cert_file=str(mine.cert), key_file=str(mine.key)))
    assert good.sip.transport == "tls" and good.sip.key_file == mine.key and good.sip.tls_scheme == "sips"
    # the names of the issue (tls_ca_file, ...) are the same keys as SPEC §2's
    same = load_settings(
        None, **_tls(tls_ca_file=str(pki.ca), tls_cert_file=str(mine.cert), tls_key_file=str(mine.key))
    )
    assert same.sip.ca_file == pki.ca and same.sip.cert_file == mine.cert
    assert load_settings(None, **_tls()).sip.ca_file is None  # no ca_file: the system's CAs
    bundle = mine.bundle(tmp_path / "both.pem")
    assert load_settings(None, **_tls(cert_file=str(bundle))).sip.key_file is None  # the key in the same file
    cases = [
        ({"ca_file": str(unreadable)}, "sip.ca_file", "cannot read"),
        ({"ca_file": str(junk)}, "sip.ca_file", "no CA certificate"),
        ({"ca_file": str(tmp_path)}, "sip.ca_file", "cannot read"),
        ({"cert_file": str(junk), "key_file": str(mine.key)}, "sip.cert_file", "no certificate"),
        ({"cert_file": str(mine.cert), "key_file": str(unreadable)}, "sip.key_file", "cannot read"),
        ({"cert_file": str(mine.cert), "key_file": str(other.key)}, "sip.key_file", "KEY_VALUES_MISMATCH"),
        ({"cert_file": str(mine.cert)}, "sip.key_file", "set sip.key_file"),
        ({"key_file": str(mine.key)}, "sip.key_file", "without sip.cert_file"),
        ({"tls_scheme": "https"}, "sip.tls_scheme", ""),
    ]
    for sip, key, words in cases:
        with pytest.raises(ConfigError) as info:
            load_settings(None, **_tls(**sip))
        assert info.value.key == key and words in str(info.value), (sip, str(info.value))


def test_token_bucket_holds_rate() -> None:
    b = TokenBucket(rate=10, burst=1)
    taken = sum(1 for i in range(1000) if b.take(i * 0.01))  # 10 s at 100 tries/s
    assert 100 <= taken <= 101
    assert b.take(20.0) and not b.take(20.0)
    assert b.wait_s(20.0) == pytest.approx(0.1)


_values = st.one_of(
    st.none(), st.integers(-5, 700), st.floats(0, 1e6, allow_nan=False), st.text(max_size=8), st.booleans()
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.text(min_size=1, max_size=8),
    sip_code=st.one_of(st.none(), st.integers(100, 699)),
    reason=st.one_of(st.none(), st.text(max_size=8)),
    extras=st.dictionaries(st.sampled_from(["duration_s", "transfer", "first", "operator_id"]), _values),
    meta=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)))),
    micro=st.integers(0, 999_999),
    retry=st.booleans(),
)
def test_the_fast_event_encoder_writes_what_the_model_writes(
    kind: str,
    sip_code: int | None,
    reason: str | None,
    extras: dict[str, object],
    meta: dict[str, object] | None,
    micro: int,
    retry: bool,
) -> None:
    evidence = {"source": "sip", "kind": kind, "sip_code": sip_code, "reason": reason, **extras}
    at = datetime(2026, 11, 29, 8, 0, 1, micro, tzinfo=UTC)
    fields = {
        "event_id": "0193",
        "sequence": 3,
        "occurred_at": at,
        "gateway_id": "gw",
        "campaign_id": "c",
        "contact_id": "k",
        "channel": Channel.VOICE,
        "status": Status.RETRY_SCHEDULED,
        "label": "Retry scheduled",
        "previous_status": Status.CALLING,
        "final": False,
        "attempt": 1,
        "max_attempts": 3,
        "retry_at": at if retry else None,
        "phone": "+420601234567",
        "meta": meta,
    }
    fast = encode_contact_event(**fields, evidence=evidence)  # type: ignore[arg-type]
    signal = {k: v for k, v in evidence.items() if v is not None}
    model = ContactStatusEvent(**fields, signal=SignalEvidence(**signal))  # type: ignore[arg-type]
    assert json.loads(fast) == json.loads(model.model_dump_json(by_alias=True))
    ContactStatusEvent.model_validate_json(fast)


def test_event_ids_are_uuid7_in_time_order() -> None:
    ids = [uuid7(1_764_000_000_000 + i) for i in range(50)]
    for text in ids:
        value = uuid.UUID(text)
        assert str(value) == text and value.version == 7 and value.variant == uuid.RFC_4122
    assert ids == sorted(ids) and len(set(ids)) == 50
