"""gateway/mqtt_io.py: paho's properties with shared tables encode and decode exactly as paho's own, and
the batched socket hands paho the bytes it would have read, in whatever pieces it asks for."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt_io import BatchedSocket, lighten_properties


def stock_class() -> type[Any]:
    assert lighten_properties()
    init, clear, is_empty = Properties._telgate_stock  # type: ignore[attr-defined]
    return type("Stock", (Properties,), {"__init__": init, "clear": clear, "isEmpty": is_empty})


def filled(cls: type[Any], packet: int) -> Any:
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


def test_shared_tables_pack_and_unpack_as_paho_does() -> None:
    stock = stock_class()
    for packet in (PacketTypes.PUBLISH, PacketTypes.PUBACK, PacketTypes.CONNECT, PacketTypes.DISCONNECT):
        light, plain = filled(Properties, packet), filled(stock, packet)
        assert light.pack() == plain.pack()
        assert light.json() == plain.json() and str(light) == str(plain)
        assert light.isEmpty() == plain.isEmpty()
        back_light, back_plain = Properties(packet), stock(packet)
        if packet == PacketTypes.PUBLISH:
            back_light.CorrelationData = b"stale"  # cleared by unpack
        assert back_light.unpack(plain.pack())[1] == back_plain.unpack(plain.pack())[1]
        assert back_light.json() == back_plain.json() == plain.json()
        back_light.clear()
        back_plain.clear()
        assert back_light.isEmpty() and back_plain.isEmpty() and back_light.json() == {}
    # the shared tables are not changed by use
    assert Properties(PacketTypes.PUBLISH).names == stock(PacketTypes.PUBLISH).names


async def test_batched_socket_serves_paho_its_pieces_and_coalesces_writes() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    s = BatchedSocket(a, loop, __import__("threading").get_ident())
    stream = bytes(range(256)) * 40  # 10,240 bytes arriving at once
    b.send(stream)
    await asyncio.sleep(0.01)
    got = bytearray()
    sizes = [1, 1, 3000, 1, 7000, 500]
    for n in sizes:
        chunk = s.recv(n)
        assert 0 < len(chunk) <= n
        got += chunk
    assert s.pending() == len(stream) - len(got)
    while s.pending():
        got += s.recv(4096)
    assert bytes(got) == stream
    try:
        s.recv(1)
        raise AssertionError("an empty non-blocking socket must say so")
    except BlockingIOError:
        pass
    for part in (b"one", b"two", b"three"):
        assert s.send(part) == len(part)
    s.flush()
    await asyncio.sleep(0.01)
    assert b.recv(100) == b"onetwothree"
    b.close()
    s.close()


def test_message_info_without_a_condition_until_somebody_waits() -> None:
    import threading
    import time

    from paho.mqtt.client import MQTTMessageInfo

    from gateway.mqtt_io import lighten_message_info

    assert lighten_message_info()
    info = MQTTMessageInfo(7)
    assert (info.mid, info.rc, info.is_published()) == (7, 0, False)
    assert list(info) == [0, 7] and info[1] == 7
    info._set_as_published()  # nobody waited: no condition needed
    assert info.is_published()
    info.wait_for_publish(0.1)  # returns at once
    # a waiter on another thread, published afterwards: woken
    later = MQTTMessageInfo(8)
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
    # many publishes racing many first waits: nobody is left waiting
    infos = [MQTTMessageInfo(i) for i in range(200)]
    threads = [threading.Thread(target=i.wait_for_publish, args=(5,)) for i in infos]
    for th in threads:
        th.start()
    for i in infos:
        i._set_as_published()
    for th in threads:
        th.join(6)
    assert not any(th.is_alive() for th in threads) and all(i.is_published() for i in infos)


def _pubacked(quick: bool, packet: bytes) -> list[tuple[int, int, bool]]:
    """(mid, reason value, properties empty) as paho's on_publish saw a PUBACK of `packet`."""
    import paho.mqtt.client as mqtt

    from gateway.mqtt_io import quick_puback

    paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if quick:
        assert quick_puback(paho)
    seen: list[tuple[int, int, bool]] = []
    paho.on_publish = lambda c, u, mid, reason, props: seen.append((mid, reason.value, props.isEmpty()))
    info = paho.publish("t", b"x", qos=1)  # not connected: kept in paho's out messages all the same
    assert info.mid in paho._out_messages
    paho._in_packet = {"command": 0x40, "packet": info.mid.to_bytes(2, "big") + packet}
    paho._packet_handle()
    assert info.mid not in paho._out_messages, "the message is released as paho releases it"
    assert [s[0] for s in seen] == [info.mid]
    return seen


def test_quick_puback_hands_paho_what_paho_decodes() -> None:
    # two bytes: Success, no properties; a refusal (0x87 not authorised) and one with a reason string take
    # paho's own decoding
    refusal = b"\x87"
    with_reason = b"\x87" + bytes([7, 0x1F, 0, 4]) + b"deny"
    nobody = b"\x10"  # No matching subscribers: what Mosquitto answers for an event nobody subscribed to
    for tail in (b"", nobody, b"\x00", refusal, with_reason, nobody + b"\x00"):
        assert _pubacked(True, tail) == _pubacked(False, tail), tail
    assert _pubacked(True, b"")[0][1:] == (0, True)
    assert _pubacked(True, nobody)[0][1:] == (0x10, True)
    assert _pubacked(True, refusal)[0][1] == 0x87
