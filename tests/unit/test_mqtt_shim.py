"""gateway/mqtt_shim.py: the start check finds what the installed aiomqtt and paho have, names what another
version lacks (with the installed versions), and the PUBACK fast path hands paho what paho decodes."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

from gateway import mqtt_shim
from gateway.mqtt_shim import LibraryMismatch, problems


def module_like(real: ModuleType, client: type[Any]) -> ModuleType:
    """`real` with its `Client` replaced."""
    fake = ModuleType(real.__name__)
    fake.__dict__.update({k: v for k, v in vars(real).items() if not k.startswith("__")})
    fake.Client = client  # type: ignore[attr-defined]
    return fake


def test_the_installed_versions_have_everything() -> None:
    assert problems() == []
    mqtt_shim.check()


async def test_the_check_also_runs_inside_an_event_loop() -> None:
    assert problems() == []


def test_an_aiomqtt_without_its_queue_is_named_with_the_versions() -> None:
    class Client(aiomqtt.Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            del self._queue

    fake = module_like(aiomqtt, Client)
    found = problems(fake, mqtt)
    assert found == ["aiomqtt.Client._queue (the asyncio.Queue of received messages)"]
    with pytest.raises(LibraryMismatch) as raised:
        mqtt_shim.check(fake, mqtt)
    text = str(raised.value)
    assert "aiomqtt 2.5.1" in text and "paho-mqtt 2.2.0" in text and "aiomqtt.Client._queue" in text
    assert raised.value.missing == found and raised.value.versions == mqtt_shim.versions()


def test_an_aiomqtt_whose_disconnected_is_not_a_future_is_named() -> None:
    class Client(aiomqtt.Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._disconnected = asyncio.Event()  # type: ignore[assignment]

    found = problems(module_like(aiomqtt, Client), mqtt)
    assert found == ["aiomqtt.Client._disconnected (the asyncio.Future that ends the connection): found a Event"]


def test_a_paho_without_a_private_method_or_attribute_is_named() -> None:
    gone = {"_do_on_publish", "_out_messages"}

    class Client(mqtt.Client):
        def __getattribute__(self, name: str) -> Any:
            if name in gone:
                raise AttributeError(name)
            return super().__getattribute__(name)

    found = problems(aiomqtt, module_like(mqtt, Client))
    assert "paho.mqtt.client.Client._do_on_publish (a method)" in found
    assert "paho.mqtt.client.Client._out_messages (the messages awaiting their PUBACK by mid)" in found
    # aiomqtt's own client is made by the real paho, which is not the fake's class: named as well
    assert "aiomqtt.Client._client (the paho client under it): found a Client" in found
    assert len(found) == 3


def test_a_paho_method_with_other_parameters_is_named() -> None:
    class Client(mqtt.Client):
        def _do_on_publish(self, mid: int, reason_code: Any) -> Any:  # type: ignore[override]
            return None

    found = [p for p in problems(aiomqtt, module_like(mqtt, Client)) if "_do_on_publish" in p]
    assert found == [
        "paho.mqtt.client.Client._do_on_publish (a method) with parameters ('mid', 'reason_code', 'properties'):"
        " found ('mid', 'reason_code')"
    ]


def test_an_aiomqtt_reader_that_no_longer_drains_pending_bytes_is_named() -> None:
    class Client(aiomqtt.Client):
        def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
            return None

    found = problems(module_like(aiomqtt, Client), mqtt)
    assert found == [
        "aiomqtt.Client._on_socket_open (a reader callback that loops while the socket has pending() bytes):"
        " its source no longer holds 'pending()'"
    ]


def test_a_module_without_a_client_is_named() -> None:
    empty = ModuleType("aiomqtt")
    assert problems(empty, mqtt) == ["aiomqtt.Client"]


# -- the PUBACK fast path --------------------------------------------------------------------------
def _pubacked(quick: bool, packet: bytes, limit: int = 0) -> tuple[list[tuple[int, int, bool]], mqtt.Client]:
    """(mid, reason value, properties empty) as paho's on_publish saw a PUBACK of `packet`."""
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    paho.max_inflight_messages = limit
    if quick:
        mqtt_shim.quick_puback(paho)
    seen: list[tuple[int, int, bool]] = []
    paho.on_publish = lambda c, u, mid, reason, props: seen.append((mid, reason.value, props.isEmpty()))
    info = paho.publish("t", b"x", qos=1)  # not connected: kept in paho's out messages all the same
    assert info.mid in paho._out_messages
    paho._in_packet = {"command": 0x40, "packet": info.mid.to_bytes(2, "big") + packet}  # type: ignore[typeddict-item]
    paho._packet_handle()
    assert info.mid not in paho._out_messages, "the message is released as paho releases it"
    assert [s[0] for s in seen] == [info.mid]
    return seen, paho


def test_quick_puback_hands_paho_what_paho_decodes() -> None:
    # two bytes: Success, no properties; a refusal (0x87 not authorised) and one with a reason string take
    # paho's own decoding
    refusal = b"\x87"
    with_reason = b"\x87" + bytes([7, 0x1F, 0, 4]) + b"deny"
    nobody = b"\x10"  # No matching subscribers: what Mosquitto answers for an event nobody subscribed to
    for tail in (b"", nobody, b"\x00", refusal, with_reason, nobody + b"\x00"):
        assert _pubacked(True, tail)[0] == _pubacked(False, tail)[0], tail
    assert _pubacked(True, b"")[0][0][1:] == (0, True)
    assert _pubacked(True, nobody)[0][0][1:] == (0x10, True)
    assert _pubacked(True, refusal)[0][0][1] == 0x87


def test_quick_puback_is_for_one_client_only() -> None:
    quick = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    other = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    mqtt_shim.quick_puback(quick)
    assert "_handle_pubackcomp" in vars(quick) and "_handle_pubackcomp" not in vars(other)


def test_quick_puback_releases_what_pahos_in_flight_limit_held_back() -> None:
    """The suspect of issue 23's in-flight question, ruled out: a PUBACK taken by the fast path goes through
    paho's `_do_on_publish`, which lowers the in-flight count and sends the message the limit held back,
    exactly as paho's own handler does."""
    import socket

    for quick in (False, True):
        paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        paho.max_inflight_messages = 2
        if quick:
            mqtt_shim.quick_puback(paho)
        a, b = socket.socketpair()
        paho.on_socket_register_write = lambda c, u, s: None  # written by nobody: the packets stay queued
        mqtt_shim.set_socket(paho, a)
        infos = [paho.publish(f"t/{i}", b"x", qos=1) for i in range(3)]
        states = [paho._out_messages[i.mid].state for i in infos]
        assert states == [mqtt.mqtt_ms_wait_for_puback] * 2 + [mqtt.mqtt_ms_queued]
        assert len(paho._out_packet) == 2 and paho._inflight_messages == 2
        paho._in_packet = {"command": 0x40, "packet": infos[0].mid.to_bytes(2, "big")}  # type: ignore[typeddict-item]
        paho._packet_handle()
        assert infos[0].mid not in paho._out_messages
        assert paho._out_messages[infos[2].mid].state == mqtt.mqtt_ms_wait_for_puback, quick
        assert len(paho._out_packet) == 3 and paho._inflight_messages == 2
        a.close()
        b.close()
