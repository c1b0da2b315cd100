"""gateway/bus/shim.py: the start check finds what the installed aiomqtt and paho have, names what another
version lacks (with the installed versions), and the PUBACK fast path hands paho what paho decodes."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest

from gateway.bus import shim as mqtt_shim
from gateway.bus.shim import LibraryMismatch, problems


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


# -- received PUBLISHes: light properties and message info, for the gateway's clients only ------------------
def _filled(cls: type[Any], packet: int) -> Any:
    from paho.mqtt.packettypes import PacketTypes

    p = cls(packet)
    if packet == PacketTypes.PUBLISH:
        p.ResponseTopic = "telgate/v1/replies/backend-1"
        p.CorrelationData = b"\x00\x01corr"
        p.UserProperty = ("k", "v")
        p.UserProperty = ("k2", "v2")
        p.MessageExpiryInterval = 30
    elif packet == PacketTypes.PUBACK:
        p.ReasonString = "quota exceeded"
    elif packet == PacketTypes.CONNECT:
        p.SessionExpiryInterval = 3600
        p.ReceiveMaximum = 256
    return p


def test_light_properties_pack_and_unpack_as_paho_does_and_leave_pahos_class_alone() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from gateway.bus.shim import LightProperties

    for packet in (PacketTypes.PUBLISH, PacketTypes.PUBACK, PacketTypes.CONNECT, PacketTypes.DISCONNECT):
        light, plain = _filled(LightProperties, packet), _filled(Properties, packet)
        assert light.pack() == plain.pack()
        assert light.json() == plain.json() and str(light) == str(plain)
        assert light.isEmpty() == plain.isEmpty()
        back_light, back_plain = LightProperties(packet), Properties(packet)  # type: ignore[no-untyped-call]
        if packet == PacketTypes.PUBLISH:
            back_light.CorrelationData = b"stale"  # cleared by unpack
        assert back_light.unpack(plain.pack())[1] == back_plain.unpack(plain.pack())[1]  # type: ignore[no-untyped-call]
        assert back_light.json() == back_plain.json() == plain.json()
        back_light.clear()
        back_plain.clear()  # type: ignore[no-untyped-call]
        assert back_light.isEmpty() and back_plain.isEmpty() and back_light.json() == {}  # type: ignore[no-untyped-call]
    # the shared tables are not changed by use, and paho's own class still builds its own
    assert LightProperties(PacketTypes.PUBLISH).names == Properties(PacketTypes.PUBLISH).names  # type: ignore[no-untyped-call]
    assert Properties(PacketTypes.PUBLISH).names is not Properties(PacketTypes.PUBLISH).names  # type: ignore[no-untyped-call]


def _received(light: bool, header: int, body: bytes, manual: bool) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """What on_message saw of a PUBLISH (header byte, body after the remaining length), and the packets paho
    queued in answer."""
    import socket

    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    paho.manual_ack_set(manual)
    if light:
        mqtt_shim.light_publish(paho)
    a, b = socket.socketpair()
    paho.on_socket_register_write = lambda c, u, s: None
    mqtt_shim.set_socket(paho, a)
    seen: list[tuple[Any, ...]] = []

    def on_message(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        props = m.properties.json() if m.properties is not None else None
        seen.append((m.topic, m.payload, m.qos, m.retain, m.dup, m.mid, props, type(m.payload), m.info.mid))

    paho.on_message = on_message
    paho._in_packet = {"command": header, "packet": body}  # type: ignore[typeddict-item]
    try:
        rc = paho._packet_handle()
        seen.append(("rc", rc))
    except Exception as exc:  # both handlers must fail alike
        seen.append(("raised", type(exc).__name__))
    out = [bytes(p["packet"]) for p in paho._out_packet]
    a.close()
    b.close()
    return seen, out


def _publish_body(topic: bytes, mid: int | None, props: bytes, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if mid is not None:
        body += mid.to_bytes(2, "big")
    return body + props + payload


def test_light_publish_hands_on_message_what_paho_decodes() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = _filled(Properties, PacketTypes.PUBLISH).pack()
    cases = [
        (0x32, _publish_body(b"telgate/v1/cmd/dial", 7, b"\x00", b'{"a": 1}')),  # QoS 1, no properties
        (0x3B, _publish_body(b"telgate/v1/cmd/dial", 65535, props, b"x" * 3000)),  # QoS 1, dup, retain
        (0x32, _publish_body("telgate/v1/cmd/ž".encode(), 1, props, b"")),  # an empty payload
        (0x32, _publish_body(b"\xff\xfe", 9, b"\x00", b"bad topic")),  # a topic that is not UTF-8
        (0x30, _publish_body(b"t", None, b"\x00", b"qos0")),  # QoS 0: paho's handler
        (0x32, b"\x00\x05ab"),  # cut short: paho's handler says what is wrong
        (0x32, _publish_body(b"t", 3, b"\x05\x01", b"")),  # properties cut short
    ]
    for header, body in cases:
        for manual in (True, False):
            light = _received(True, header, body, manual)
            stock = _received(False, header, body, manual)
            assert light == stock, (header, body[:20], manual)


def test_light_message_info_has_no_condition_until_somebody_waits() -> None:
    import threading
    import time

    from gateway.bus.shim import LightMessageInfo

    info = LightMessageInfo(7)
    assert (info.mid, info.rc, info.is_published()) == (7, 0, False)
    assert list(info) == [0, 7] and info[1] == 7
    info._set_as_published()  # nobody waited: no condition needed
    assert info.is_published()
    info.wait_for_publish(0.1)  # returns at once
    later = LightMessageInfo(8)
    woke: list[float] = []

    def waiter() -> None:
        later.wait_for_publish(5)
        woke.append(time.monotonic())

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    published_at = time.monotonic()
    later._set_as_published()
    t.join(5)
    assert woke and woke[0] - published_at < 1.0 and later.is_published()
    infos = [LightMessageInfo(i) for i in range(200)]
    threads = [threading.Thread(target=i.wait_for_publish, args=(5,)) for i in infos]
    for th in threads:
        th.start()
    for i in infos:
        i._set_as_published()
    for th in threads:
        th.join(6)
    assert not any(th.is_alive() for th in threads) and all(i.is_published() for i in infos)
    # paho's own class is untouched: its messages still get their condition at once
    assert isinstance(mqtt.MQTTMessageInfo(1)._condition, threading.Condition)
    assert (
        "_condition" in mqtt.MQTTMessageInfo.__dict__
        and type(mqtt.MQTTMessageInfo.__dict__["_condition"]).__name__ == "member_descriptor"
    )


def test_light_publish_takes_a_command_without_pahos_classes() -> None:
    from gateway.bus.shim import LightMessageInfo, LightProperties

    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    paho.manual_ack_set(True)
    mqtt_shim.light_publish(paho)
    got: list[mqtt.MQTTMessage] = []
    paho.on_message = lambda c, u, m: got.append(m)
    paho._in_packet = {"command": 0x32, "packet": _publish_body(b"t/cmd", 5, b"\x00", b"{}")}  # type: ignore[typeddict-item]
    paho._packet_handle()
    assert type(got[0].info) is LightMessageInfo and type(got[0].properties) is LightProperties
    assert got[0].timestamp > 0 and got[0].state == mqtt.mqtt_ms_invalid


def test_a_paho_message_of_another_shape_is_named() -> None:
    class MQTTMessage:
        __slots__ = ("mid", "payload")

    fake = module_like(mqtt, mqtt.Client)
    fake.MQTTMessage = MQTTMessage  # type: ignore[attr-defined]
    assert problems(aiomqtt, fake) == [
        "paho.mqtt.client.MQTTMessage with the slots ['_topic', 'dup', 'info', 'mid', 'payload', 'properties', 'qos',"
        " 'retain', 'state', 'timestamp']: found ['mid', 'payload']"
    ]


def _sent(light: bool, limit: int, queue: int, connected: bool) -> list[Any]:
    """Everything paho's state and answers show of a run of publishes and a PUBACK."""
    import socket

    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    paho.max_inflight_messages = limit
    paho.max_queued_messages_set(queue)
    if light:
        mqtt_shim.quick_puback(paho)
        mqtt_shim.light_send(paho)
    a, b = socket.socketpair()
    paho.on_socket_register_write = lambda c, u, s: None
    if connected:
        mqtt_shim.set_socket(paho, a)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = b"c"
    shown: list[Any] = []
    for topic, payload, qos, retain, p in (
        ("evt/a", b"1", 1, False, None),
        ("evt/b", "two", 1, True, props),
        ("evt/c", None, 1, False, None),
        ("evt/d", 4.5, 0, False, None),
        ("evt/e", b"5", 1, False, None),
        ("evt/#", b"6", 1, False, None),
    ):
        try:
            info = paho.publish(topic, payload, qos=qos, retain=retain, properties=p)
            shown.append((info.mid, info.rc, info.is_published() if info.rc == 0 else None))
        except ValueError as exc:
            shown.append(("ValueError", str(exc)))
    state = lambda: [  # noqa: E731
        (m.mid, m.topic, m.payload, m.qos, m.retain, m.dup, m.state, m.properties is not None)
        for m in paho._out_messages.values()
    ]
    shown += [state(), paho._inflight_messages, [bytes(p["packet"]) for p in paho._out_packet]]
    first = next(iter(paho._out_messages), None)
    if first is not None:
        paho._in_packet = {"command": 0x40, "packet": first.to_bytes(2, "big")}  # type: ignore[typeddict-item]
        paho._packet_handle()
        shown += [state(), paho._inflight_messages, [bytes(p["packet"]) for p in paho._out_packet]]
    a.close()
    b.close()
    return shown


def test_light_send_publishes_as_paho_does() -> None:
    for limit in (0, 2, 64):
        for queue in (0, 2):
            for connected in (True, False):
                assert _sent(True, limit, queue, connected) == _sent(False, limit, queue, connected), (
                    limit,
                    queue,
                    connected,
                )
    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    mqtt_shim.light_send(paho)
    from gateway.bus.shim import LightMessageInfo

    assert type(paho.publish("t", b"x", qos=1)) is LightMessageInfo
    assert type(paho.publish("t", b"x", qos=0)) is mqtt.MQTTMessageInfo
