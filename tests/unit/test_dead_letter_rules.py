"""Which outbox rows can never be published (gateway/bus/outbox.py), decided before paho sees them: each class
against Mosquitto's own answer, measured (a wildcard: paho's ValueError; a control character or a
non-character in the topic: Mosquitto closes the connection, 'Malformed packet', so the row would end
every connection unanswered); and paho's return codes: about the row, or about the connection."""

from __future__ import annotations

import aiomqtt
import pytest
from paho.mqtt.enums import MQTTErrorCode

from gateway.bus import MAX_PAYLOAD, _publish_failure, _unpublishable
from gateway.store import OutboxRow
from metrics.recorder import DEAD_LETTER_REASONS


def row(topic: str, payload: bytes = b"{}", correlation: bytes | None = None) -> OutboxRow:
    return OutboxRow(1, topic, payload, False, correlation, 0.0)


@pytest.mark.parametrize(
    "topic",
    ["telgate/v1/evt/command", "tenant/acme/v1/evt/contact/voice/c/k", "é/ü/名前", "a\xa0b", "$x/y", "a" * 65535],
)
def test_a_topic_a_client_may_publish_to_is_tried(topic: str) -> None:
    assert _unpublishable(row(topic)) is None


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "a/#",
        "a/+/b",
        "a+b",
        "a\x00b",
        "bell\x07",
        "esc\x1b[0m",
        "del\x7f",
        "c1\x85",
        "nonchar\ufdd0",
        "nonchar\ufffe",
        "plane16\U0010ffff",
        "not utf-8 \udcff",
        "lone \ud800",
        "é" * 32768,  # 65,536 bytes
    ],
)
def test_a_topic_no_client_may_publish_to_is_refused_before_paho(topic: str) -> None:
    refusal = _unpublishable(row(topic))
    assert refusal is not None and refusal[0] == "invalid_topic", refusal


def test_sizes() -> None:
    assert _unpublishable(row("t", b"x" * MAX_PAYLOAD)) is None
    assert _unpublishable(row("t", b"x" * (MAX_PAYLOAD + 1))) == (
        "too_large",
        f"the payload is {MAX_PAYLOAD + 1} bytes, more than {MAX_PAYLOAD}",
    )
    assert _unpublishable(row("t", correlation=b"c" * 65535)) is None
    refusal = _unpublishable(row("t", correlation=b"c" * 65536))
    assert refusal is not None and refusal[0] == "too_large"


def test_paho_return_codes_about_the_row_are_dead_letters_about_the_connection_end_it() -> None:
    assert _publish_failure(MQTTErrorCode.MQTT_ERR_SUCCESS) is None
    for rc in (
        MQTTErrorCode.MQTT_ERR_NO_CONN,
        MQTTErrorCode.MQTT_ERR_QUEUE_SIZE,
        MQTTErrorCode.MQTT_ERR_CONN_LOST,
        MQTTErrorCode.MQTT_ERR_KEEPALIVE,
        MQTTErrorCode.MQTT_ERR_ERRNO,
        MQTTErrorCode.MQTT_ERR_AGAIN,
    ):
        with pytest.raises(aiomqtt.MqttCodeError):
            _publish_failure(rc)
    too_large = _publish_failure(MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE)
    assert too_large is not None and too_large[0] == "too_large"
    for rc in (MQTTErrorCode.MQTT_ERR_INVAL, MQTTErrorCode.MQTT_ERR_PROTOCOL, MQTTErrorCode.MQTT_ERR_NOT_SUPPORTED):
        refusal = _publish_failure(rc)
        assert refusal is not None and refusal[0] == "client_refused" and f"rc {int(rc)}" in refusal[1]


def test_every_reason_is_a_label_the_recorder_knows() -> None:
    reasons = {"invalid_topic", "too_large", "client_refused", "broker_refused"}
    assert reasons == set(DEAD_LETTER_REASONS)
