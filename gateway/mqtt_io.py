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
from typing import Any

import aiomqtt
from paho.mqtt.client import MQTT_LOG_DEBUG

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
            with contextlib.suppress(OSError, ValueError):
                self._sock.settimeout(1.0)
                self._sock.sendall(self._wbuf)
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
            except OSError:
                # the connection is broken: make paho's reader see it (end of stream), which ends
                # aiomqtt's connection as any other loss would
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
    """Put a `BatchedSocket` under `client`'s paho before `async with client` connects it (and share
    paho's property tables, `lighten_properties`)."""
    lighten_properties()
    lighten_message_info()
    paho = client._client
    quick_puback(paho)
    loop = client._loop
    loop_thread = threading.get_ident()  # called on the event loop's thread
    aiomqtt_open = paho.on_socket_open
    current: BatchedSocket | None = None

    def pump() -> None:
        sock = current
        if sock is None:
            return
        flush = sock.flush
        if paho._sock is not sock:  # a connection that is gone
            return
        try:
            paho.loop_write()  # paho's queued packets into the buffer (or a DISCONNECT and a close)
        except Exception as exc:
            if not client._disconnected.done():
                client._disconnected.set_exception(exc)
            return
        flush()

    def on_socket_open(c: Any, userdata: Any, sock: Any) -> None:
        nonlocal current
        current = BatchedSocket(sock, loop, loop_thread)
        paho._sock = current
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


# -- paho's MQTT 5 properties, without rebuilding their tables for every packet ----------------------
_PRIVATE = frozenset({"packetType", "types", "names", "properties"})


def lighten_properties() -> bool:
    """paho's `Properties.__init__` builds its two tables of 27 properties (and 27 `list.index` calls)
    afresh for every packet it decodes, every PUBLISH and PUBACK included, and `clear`/`isEmpty` walk
    them with a `str.replace` per name: a fifth of the event loop thread's time with single commands
    (py-spy). The tables never change after `__init__`, so every instance can share one copy; `clear`
    and `isEmpty` look at the instance's own attributes, which are where paho keeps property values.
    Applied once, only to the paho whose `Properties` has exactly the attributes these shared tables
    replace; False (and left alone) otherwise."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if getattr(Properties, "_telgate_light", False):
        return True
    template = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if set(vars(template)) != _PRIVATE:  # another paho than the one this was written against
        return False
    types, names, table = template.types, template.names, template.properties

    def __init__(self: Any, packetType: int) -> None:
        d = self.__dict__
        d["packetType"] = packetType
        d["types"] = types
        d["names"] = names
        d["properties"] = table

    def clear(self: Any) -> None:
        d = self.__dict__
        for name in [n for n in d if n not in _PRIVATE]:
            del d[name]

    def isEmpty(self: Any) -> bool:
        return all(n in _PRIVATE for n in self.__dict__)

    Properties._telgate_stock = (Properties.__init__, Properties.clear, Properties.isEmpty)  # type: ignore[attr-defined]
    Properties.__init__ = __init__  # type: ignore[method-assign]
    Properties.clear = clear  # type: ignore[method-assign]
    Properties.isEmpty = isEmpty  # type: ignore[method-assign]
    Properties._telgate_light = True  # type: ignore[attr-defined]
    return True


def lighten_message_info() -> bool:
    """paho gives every message it sends or receives an `MQTTMessageInfo` with its own
    `threading.Condition` (an RLock, a deque and six bound methods), only for `wait_for_publish` from
    another thread, which neither aiomqtt nor telgate calls: an eighth of the event loop thread with
    single commands (py-spy). The condition is made when somebody first waits instead; a message
    published before anyone waited is marked so under a lock that the first waiter takes too, so a
    waiter either finds the mark or is notified. False (and left alone) on another paho."""
    from paho.mqtt.client import MQTTMessageInfo
    from paho.mqtt.enums import MQTTErrorCode

    if getattr(MQTTMessageInfo, "_telgate_light", False):
        return True
    slot: Any = MQTTMessageInfo.__dict__.get("_condition")
    if type(slot).__name__ != "member_descriptor" or set(MQTTMessageInfo.__slots__) != {
        "_condition",
        "_iterpos",
        "_published",
        "mid",
        "rc",
    }:
        return False
    made = threading.Lock()
    success = MQTTErrorCode.MQTT_ERR_SUCCESS
    stock_init = MQTTMessageInfo.__init__

    def __init__(self: Any, mid: int) -> None:
        self.mid = mid
        self._published = False
        self.rc = success
        self._iterpos = 0

    def condition(self: Any) -> threading.Condition:
        try:
            return slot.__get__(self)  # type: ignore[no-any-return, unused-ignore]
        except AttributeError:
            with made:
                try:
                    return slot.__get__(self)  # type: ignore[no-any-return, unused-ignore]
                except AttributeError:
                    cond = threading.Condition()
                    slot.__set__(self, cond)
                    return cond

    def _set_as_published(self: Any) -> None:
        try:
            cond = slot.__get__(self)
        except AttributeError:
            with made:
                try:
                    cond = slot.__get__(self)
                except AttributeError:  # nobody waits: the mark is enough
                    self._published = True
                    return
        with cond:
            self._published = True
            cond.notify()

    MQTTMessageInfo._telgate_stock = stock_init  # type: ignore[attr-defined]
    MQTTMessageInfo.__init__ = __init__  # type: ignore[method-assign]
    MQTTMessageInfo._condition = property(condition, slot.__set__)  # type: ignore[assignment, misc]
    MQTTMessageInfo._set_as_published = _set_as_published  # type: ignore[method-assign]
    MQTTMessageInfo._telgate_light = True  # type: ignore[attr-defined]
    return True


# -- PUBACKs of success without decoding them ---------------------------------------------------------
def quick_puback(paho: Any) -> bool:
    """Every event the gateway publishes comes back as a PUBACK, and paho decodes each into a new
    `ReasonCode` (which copies its table of 50 names and looks the name up by a walk of it) and a new
    `Properties`: a tenth of the event loop thread with single commands (py-spy `--gil`). A PUBACK of two
    bytes is, by MQTT 5 §3.4.2.1 (and always in 3.1.1), the packet id alone: reason Success, no
    properties; one of three bytes adds a reason code and no properties, and Mosquitto sends 0x10 (No
    matching subscribers) so for every event nobody subscribed to. Those of a success code (below 0x80)
    are handed to paho's own `_do_on_publish` with one shared `ReasonCode` per code and one empty
    `Properties`, which nobody changes; every other PUBACK (a refusal, properties, a PUBCOMP) goes
    through paho's own handler. False (and left alone) on a paho without the attributes used."""
    from paho.mqtt.enums import MQTTErrorCode
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    needed = ("_in_packet", "_out_messages", "_out_message_mutex", "_do_on_publish", "_handle_pubackcomp")
    if not all(hasattr(paho, name) for name in needed):
        return False
    stock = paho._handle_pubackcomp
    codes: dict[int, ReasonCode] = {}
    empty = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    ok = MQTTErrorCode.MQTT_ERR_SUCCESS
    debug = logging.DEBUG

    def handle(cmd: str) -> Any:
        packet = paho._in_packet["packet"]
        size = len(packet)
        code = 0 if size == 2 else packet[2] if size == 3 else 0x80
        if cmd != "PUBACK" or code >= 0x80:
            return stock(cmd)
        reason = codes.get(code)
        if reason is None:
            try:
                reason = codes[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
            except (KeyError, ValueError):  # not a PUBACK reason code: paho's handler says so
                return stock(cmd)
        mid = (packet[0] << 8) | packet[1]
        logger = paho._logger
        if paho.on_log is not None or (logger is not None and logger.isEnabledFor(debug)):
            paho._easy_log(MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with paho._out_message_mutex:
            if mid in paho._out_messages:
                return paho._do_on_publish(mid, reason, empty)
        return ok

    paho._handle_pubackcomp = handle
    return True


# -- reading with a timeout ---------------------------------------------------------------------------
class Receiver:
    """`client.messages` read with a timeout that loses nothing.

    aiomqtt's `__anext__` takes each message off its queue in a task of its own and, when it is
    cancelled, cancels that task; if the task has already taken the message, the cancel does nothing and
    the message is dropped. So a timeout around `anext(client.messages)` that expires in the loop turn a
    message arrives loses that message (one `telgate demo` run in six waited for an event it had lost).
    Here the wait for the next message outlives a timeout: `get` waits on it without cancelling it, and
    the next `get` goes on waiting for the same message."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._messages = aiter(client.messages)
        self._next: asyncio.Future[aiomqtt.Message] | None = None

    async def get(self, within: float | None) -> aiomqtt.Message | None:
        """The next message, or None when `within` seconds went by first; raises what the iterator
        raises (aiomqtt.MqttError on a disconnect)."""
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._messages))
        done, _ = await asyncio.wait((self._next,), timeout=within)
        if not done:
            return None
        ready, self._next = self._next, None
        return ready.result()

    def close(self) -> None:
        """Stop waiting (the connection is being closed: what is not read by now is not wanted)."""
        if self._next is not None:
            self._next.cancel()
            self._next = None
