"""whatsapp/ pure parts: the error table, signatures, pacing, payload parsing (real-world bodies)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.channels.whatsapp import parse_callback, result_signal, status_signal
from gateway.domain.signals import Kind
from tests.conftest import CORPORA
from whatsapp.client import Accepted, CloudApiClient, Failed, TimedOut
from whatsapp.errors import ErrorClass, classify, is_account_level
from whatsapp.models import Notification, Status
from whatsapp.ratelimit import PairLimit, RateBackoff
from whatsapp.webhook import signature, signature_ok

E = ErrorClass


@pytest.mark.parametrize(
    ("code", "http", "webhook", "expected"),
    [
        (131026, 400, False, E.SENDING_FAILED),
        (131026, None, True, E.SENDING_FAILED),
        (130429, 429, False, E.RETRYABLE),
        (131000, 500, False, E.RETRYABLE),
        (None, 503, False, E.RETRYABLE),
        (131049, None, True, E.PAIR_LIMIT),
        (100, 400, False, E.INVALID),
        (132012, 400, False, E.INVALID),
        (190, 401, False, E.ACCOUNT),
        (250, 400, False, E.ACCOUNT),
        (0, None, True, E.ACCOUNT),
        (131047, None, True, E.UNDELIVERED),
        (131062, 400, False, E.REJECTED),
    ],
)
def test_error_table(code: int | None, http: int | None, webhook: bool, expected: ErrorClass) -> None:
    assert classify(code, http, on_webhook=webhook) is expected


def test_account_level() -> None:
    assert is_account_level(190) and is_account_level(131031) and not is_account_level(131026)


def test_signature_constant_time_check() -> None:
    body = b'{"object":"whatsapp_business_account"}'
    good = signature(b"s3cret", body)
    assert good.startswith("sha256=") and len(good) == 7 + 64
    assert signature_ok(b"s3cret", body, good)
    assert not signature_ok(b"s3cret", body, None)
    assert not signature_ok(b"other", body, good)
    assert not signature_ok(b"s3cret", body + b"\n", good)


def test_the_rate_halves_for_a_minute_after_130429() -> None:
    rate = RateBackoff(rate=100)
    assert rate.current_rate(0.0) == 100
    rate.rate_limited(10.0)
    assert rate.current_rate(20.0) == 50 and rate.current_rate(70.1) == 100


def test_pair_limit_spaces_one_number() -> None:
    pairs = PairLimit(6.0)
    assert pairs.reserve("+420601", 0.0) == 0.0
    assert pairs.reserve("+420601", 1.0) == 5.0
    assert pairs.reserve("+420601", 1.0) == 11.0
    assert pairs.reserve("+420602", 1.0) == 0.0


def test_template_body_follows_the_cloud_api() -> None:
    body = CloudApiClient.template_body("+420601234567", {"name": "t", "language": "cs"}, "c/k/1")
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "420601234567",
        "type": "template",
        "template": {"name": "t", "language": {"code": "cs"}},
        "biz_opaque_callback_data": "c/k/1",
    }


def test_callback_data_round_trip() -> None:
    assert parse_callback("spring-2027/c-0042/2") == (("spring-2027", "c-0042"), 2)
    assert parse_callback("some data") is None and parse_callback(None) is None


def test_result_signals() -> None:
    assert result_signal(Accepted("wamid.1", "accepted", 200, 0.01), 1, 600).kind is Kind.WA_ACCEPTED
    assert result_signal(Failed(E.PAIR_LIMIT, 131049, "", None, 400, 0.0), 1, 600).kind is Kind.WA_PAIR_LIMIT
    amb = result_signal(TimedOut(written=True, elapsed_s=10), 1, 600)
    assert amb.kind is Kind.WA_AMBIGUOUS and amb.duration_s == 600
    assert result_signal(TimedOut(written=False, elapsed_s=10), 1, 600).kind is Kind.WA_RETRYABLE


def test_status_signals() -> None:
    assert status_signal(Status(id="w", status="played")).kind is Kind.WA_READ  # type: ignore[union-attr]
    failed = status_signal(Status.model_validate({"id": "w", "status": "failed", "errors": [{"code": 131049}]}))
    assert failed is not None and failed.kind is Kind.WA_PAIR_LIMIT
    assert status_signal(Status(id="w", status="in_orbit")) is None


async def test_connection_refused_is_retryable_not_written() -> None:
    from tests.support.broker import free_port

    async with CloudApiClient(f"http://127.0.0.1:{free_port()}", "v21.0", "1", "t", 2.0) as client:
        result = await client.send_template("+420601234567", {"name": "t", "language": "en"}, "c/k/1")
    assert isinstance(result, Failed) and result.error_class is E.RETRYABLE and result.http_status is None


def corpus(name: str) -> bytes:
    path = CORPORA / "whatsapp" / name
    if not path.exists():
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    return path.read_bytes()


def test_real_send_responses_and_error_bodies() -> None:
    ok = CloudApiClient._result(200, corpus("sashanclrp__wappa__v25-send-response-message_status-accepted.json"), 0)
    assert ok == Accepted("wamid.golden", "accepted", 200, 0)
    basic = CloudApiClient._result(200, corpus("restfb__restfb__send-response-basic.json"), 0)
    assert isinstance(basic, Accepted) and basic.message_status is None
    err = CloudApiClient._result(400, corpus("sashanclrp__wappa__v25-send-error-131062-bsuid-unsupported.json"), 0)
    assert isinstance(err, Failed) and err.code == 131062 and err.error_class is E.REJECTED
    for name, cls in [
        ("david-lev__pywa__error-object-190-expired-token-api-style.json", E.ACCOUNT),
        ("david-lev__pywa__error-object-131047-reengagement-status-style.json", E.REJECTED),
        ("david-lev__pywa__error-object-131053-media-upload-status-style.json", E.REJECTED),
    ]:
        body = json.dumps({"error": json.loads(corpus(name))}).encode()
        res = CloudApiClient._result(400, body, 0)
        assert isinstance(res, Failed) and res.error_class is cls, name
    garbage = CloudApiClient._result(502, b"<html>Bad gateway</html>", 0)
    assert isinstance(garbage, Failed) and garbage.error_class is E.RETRYABLE


def test_every_corpus_notification_parses() -> None:
    folder = CORPORA / "whatsapp"
    if not folder.is_dir():
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    envelopes = [p for p in sorted(folder.glob("*.json")) if b'"entry"' in p.read_bytes()]
    assert len(envelopes) >= 15
    for path in envelopes:
        note = Notification.model_validate_json(path.read_bytes())
        assert note.statuses() or note.messages() or note.errors(), path.name


def test_unknown_fields_are_kept_not_rejected(tmp_path: Path) -> None:
    note = Notification.model_validate(
        {
            "object": "x",
            "surprise": 1,
            "entry": [{"changes": [{"value": {"statuses": [{"id": "w", "status": "sent", "new_field": {"a": 1}}]}}]}],
        }
    )
    assert note.statuses()[0].status == "sent"
