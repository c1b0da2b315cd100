"""Batched socket I/O under paho's MQTT client: one `recv` for many packets, one `send` per loop turn.

paho reads a packet with a `recv` per header byte and one for the rest (three system calls for each
PUBLISH and PUBACK) and writes every packet with its own `send`; with aiomqtt each batch of writes also
costs a cross-thread wake-up and two `epoll_ctl` calls (add and remove the writer). At the gateway's
rates that was a third of the event loop thread's time (py-spy, bench/ingest with single commands), and
every system call hands the GIL to the store thread and waits to get it back.

`BatchedSocket` stands between paho and its socket (plain or TLS):

- `recv(n)` serves from a buffer filled by one `recv` of up to 256 KiB; its `pending()` tells aiomqtt's
  reader callback, which already loops on `pending()` for TLS sockets, that whole packets are still
  buffered, so nothing waits for a readiness event that will not come;
- `send(data)` appends to a buffer; the buffer is written by `flush`, run once the current loop turn is
  over (paho's writes of that turn coalesced) and again on writability while the kernel's buffer is full.

`install` puts it under an aiomqtt client before it connects: paho's socket-open callback wraps the new
socket, and its write-registration callbacks schedule `paho.loop_write()` + `flush` on the event loop
instead of registering aiomqtt's writer. Nothing else about the protocol changes: paho still decodes,
orders and acknowledges every packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
from typing import Any, Self

import aiomqtt

from gateway.bus import shim as mqtt_shim

log = logging.getLogger("telgate.bus")
READ_CHUNK = 256 * 1024


class BatchedSocket:
    def __init__(self, sock: Any, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        self._sock = sock
        self._loop = loop
        self._loop_thread = loop_thread
        self._fd: int = sock.fileno()
        self._rbuf = b""
        self._rpos = 0
        self._wbuf = bytearray()
        self._writer = False  # our flush is registered as the fd's writer
        self._closed = False

    # -- paho's side -------------------------------------------------------------------------
    def recv(self, n: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data: bytes = self._sock.recv(READ_CHUNK)  # BlockingIOError / SSLWantReadError go up to paho
            if len(data) <= n:
                return data  # b"" at the end of the stream
            self._rbuf, self._rpos = data, 0
        end = self._rpos + n
        chunk = self._rbuf[self._rpos : end]
        self._rpos = min(end, len(self._rbuf))
        return chunk

    def pending(self) -> int:
        """Bytes readable without a readiness event: ours, and a TLS socket's decrypted ones."""
        buffered = len(self._rbuf) - self._rpos
        ssl_pending = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        return buffered + ssl_pending

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ConnectionError("socket closed")
        self._wbuf += data
        return len(data)

    def fileno(self) -> int:
        return self._sock.fileno()  # type: ignore[no-any-return]

    def close(self) -> None:
        """paho closes right after queueing a DISCONNECT (whose properties may end the session): write
        what is buffered first, waiting a moment for the kernel to take it."""
        if self._closed:
            return
        self._closed = True
        self._unregister()
        if self._wbuf:
            try:
                self._sock.settimeout(1.0)
                self._sock.sendall(self._wbuf)
            except (OSError, ValueError) as exc:  # the last packets (a DISCONNECT) are lost with the connection
                log.debug("could not write the last bytes before closing", extra={"detail": repr(exc)})
        self._wbuf.clear()
        self._sock.close()

    def __getattr__(self, name: str) -> Any:  # anything else paho or aiomqtt asks of a socket
        return getattr(self._sock, name)

    # -- the event loop's side -----------------------------------------------------------------
    def flush(self) -> None:
        if self._closed:
            return
        if self._wbuf:
            try:
                sent = self._sock.send(self._wbuf)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except OSError as exc:
                # the connection is broken: make paho's reader see it (end of stream), which ends
                # aiomqtt's connection as any other loss would (logged there, as "bus disconnected")
                log.debug("write failed: ending the connection", extra={"detail": repr(exc)})
                self._wbuf.clear()
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                sent = 0
            del self._wbuf[:sent]
        if self._wbuf and not self._writer:
            self._loop.add_writer(self._fd, self.flush)
            self._writer = True
        elif not self._wbuf:
            self._unregister()

    def _unregister(self) -> None:
        if self._writer:
            self._writer = False
            if threading.get_ident() == self._loop_thread:
                self._loop.remove_writer(self._fd)
            else:
                self._loop.call_soon_threadsafe(self._loop.remove_writer, self._fd)


def install(client: aiomqtt.Client) -> None:
    """Put a `BatchedSocket` under `client`'s paho before `async with client` connects it, and let its
    PUBACKs of success skip paho's decoding (`mqtt_shim.quick_puback`). Checks first, once per process,
    that aiomqtt and paho have what this relies on (`mqtt_shim.check`)."""
    mqtt_shim.check()
    paho = mqtt_shim.paho_of(client)
    mqtt_shim.quick_puback(paho)
    mqtt_shim.light_publish(paho)
    mqtt_shim.light_send(paho)
    loop = mqtt_shim.loop_of(client)
    disconnected = mqtt_shim.disconnected(client)
    loop_thread = threading.get_ident()  # called on the event loop's thread
    aiomqtt_open = paho.on_socket_open
    current: BatchedSocket | None = None

    def pump() -> None:
        sock = current
        if sock is None:
            return
        flush = sock.flush
        if mqtt_shim.socket_of(paho) is not sock:  # a connection that is gone
            return
        try:
            paho.loop_write()  # paho's queued packets into the buffer (or a DISCONNECT and a close)
        except Exception as exc:
            if not disconnected.done():
                disconnected.set_exception(exc)
            return
        flush()

    def on_socket_open(c: Any, userdata: Any, sock: Any) -> None:
        nonlocal current
        current = BatchedSocket(sock, loop, loop_thread)
        mqtt_shim.set_socket(paho, current)
        if aiomqtt_open is not None:
            aiomqtt_open(c, userdata, current)  # aiomqtt's reader callback loops while `pending()`

    def on_register_write(c: Any, userdata: Any, sock: Any) -> None:
        """paho calls this once until its queue is written out (`_registered_write`): one pump at a time."""
        if threading.get_ident() == loop_thread:
            loop.call_soon(pump)
        else:  # the CONNECT, queued in aiomqtt's connect thread
            loop.call_soon_threadsafe(pump)

    def on_unregister_write(c: Any, userdata: Any, sock: Any) -> None:
        """paho's queue is empty: the buffer's own writer (if any) finishes the job."""

    paho.on_socket_open = on_socket_open
    paho.on_socket_register_write = on_register_write
    paho.on_socket_unregister_write = on_unregister_write


# -- reading with a timeout ---------------------------------------------------------------------------
class Receiver:
    """`client.messages` read with a timeout that loses nothing.

    aiomqtt's `__anext__` takes each message off its queue in a task of its own and, when it is
    cancelled, cancels that task; if the task has already taken the message, the cancel does nothing and
    the message is dropped. So a timeout around `anext(client.messages)` that expires in the loop turn a
    message arrives loses that message (one `telgate demo` run in six waited for an event it had lost).
    Here the wait for the next message outlives a timeout: `get` waits on it without cancelling it, and
    the next `get` goes on waiting for the same message.

    That wait is a task the receiver owns: `async with Receiver(client) as receiver:` cancels and awaits
    it at the end, so none outlives the connection it reads."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._messages = aiter(client.messages)
        self._next: asyncio.Task[aiomqtt.Message] | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _read(self) -> aiomqtt.Message:
        return await anext(self._messages)

    async def get(self, within: float | None) -> aiomqtt.Message | None:
        """The next message, or None when `within` seconds went by first; raises what the iterator
        raises (aiomqtt.MqttError on a disconnect)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_task(self._read(), name="mqtt-receiver-next")
        done, _ = await asyncio.wait((self._next,), timeout=within)
        if not done:
            return None
        ready, self._next = self._next, None
        return ready.result()

    async def aclose(self) -> None:
        """Stop waiting and wait for the wait to end (the connection is being closed: what is not read by
        now is not wanted). What it ended with other than the cancel is logged, not raised: a
        disconnect at the close is no news, and the close goes on."""
        task, self._next = self._next, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait((task,))
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("the receiver's last wait ended in an error", extra={"detail": repr(exc)})
