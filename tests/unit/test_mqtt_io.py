"""gateway/bus/mqtt_io.py: the batched socket hands paho the bytes it would have read, in whatever pieces it
asks for, and coalesces paho's writes of a loop turn (the PUBACK fast path: tests/unit/test_mqtt_shim.py)."""

from __future__ import annotations

import asyncio
import socket

from gateway.bus.mqtt_io import BatchedSocket


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


def test_the_outbox_window_stays_within_the_brokers_receive_maximum() -> None:
    from gateway.bus import WINDOW, outbox_window

    assert outbox_window(None) == WINDOW  # none said: 65,535 (MQTT 5 §3.2.2.3.3)
    assert outbox_window(20) == 19  # Mosquitto's default, one left for the presence
    assert outbox_window(100) == WINDOW
    assert outbox_window(1) == 1
