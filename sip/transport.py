"""The asyncio shells for UDP, TCP and TLS: bytes in become UA calls, the UA's outputs are sent, one timer
re-armed.

Packets (or connections) from addresses outside `allowed` are dropped and counted (an empty `allowed`
admits nothing: "0.0.0.0/0" admits everything); a message over
64 KiB is refused by the codec (UDP) or closes the connection (TCP, where it cannot be framed).

TCP (RFC 3261 §18.3): one connection to each PBX, opened on the first message for it and re-opened by
the next one after it drops (the owner hears `LinkLost` and decides when), plus a listener on our port
for requests a PBX sends on a connection of its own. Messages are framed by Content-Length; CRLF
keepalives (RFC 5626 §3.5.1) between messages are skipped. A response goes back on the connection its
request came in on; a request goes on the connection to the PBX it is addressed to (the UA addresses
every request of a dialog to its INVITE's PBX).

TLS (RFC 3261 §26.2, RFC 5630): the TCP shell with Python's `ssl` on the connection to each PBX, TLS 1.2
or newer, each PBX's certificate verified against `ca_file` (or the system's CAs) and its name against
that PBX's server name, always. There is no TLS listener: a PBX sends its requests back on our
connection (RFC 5923 connection reuse; our Via carries `alias`). A connection that cannot be made is a
`LinkFailed` naming the PBX, and every INVITE that waited for it fails at once with the reason (for a
certificate, in the call's evidence as `tls`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from .message import MAX_MESSAGE, SipError
from .ua import Addr, CallUpdate, Datagram, Output, PbxAnswered, PbxSilent, PingAnswered, UserAgent
from .waiting import wait_event

log = logging.getLogger("telgate.sip")
Networks = list[ipaddress.IPv4Network | ipaddress.IPv6Network]


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """No connection to the PBX: refused, unreachable, or (TLS) a handshake that failed."""

    transport: str  # "tcp" or "tls"
    why: str
    tls: str | None = None  # the TLS reason, e.g. "certificate verify failed: certificate has expired"
    pbx: Addr | None = None  # the PBX the connection was for


@dataclass(frozen=True, slots=True)
class LinkLost:
    """Our open connection to a PBX ended (the PBX closed it, or the network broke it); the next message for
    that PBX opens a new one."""

    transport: str
    pbx: Addr
    why: str


Update = CallUpdate | PingAnswered | PbxAnswered | PbxSilent | LinkFailed | LinkLost
OnUpdate = Callable[[Update], None]


class _Shell:
    """What both transports share: feeding the UA, handing its updates on, and its one timer."""

    def __init__(self, ua: UserAgent, on_update: OnUpdate, allowed: Networks) -> None:
        self.ua = ua
        self.on_update = on_update
        self.allowed = allowed
        self._wake = asyncio.Event()
        self.dropped = 0
        self._failures_logged: set[tuple[str, str]] = set()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def admits(self, host: str) -> bool:
        if any(ipaddress.ip_address(host) in net for net in self.allowed):
            return True
        self.dropped += 1
        return False

    def deliver(self, data: bytes, addr: Addr) -> None:
        """What came in from `addr` to the UA, its outputs out. The codec refuses what is malformed (a 400, or
        dropped and counted); an exception past it is a fault of ours, contained here: counted in the UA's
        `stats["receive_failed"]`, logged with its traceback the first time, and the next datagram goes on."""
        try:
            outputs = self.ua.receive(data, addr, self._now())
        except Exception as exc:
            self._failed("receive_failed", exc, addr)
            return
        self.emit(outputs)

    def _failed(self, what: str, exc: Exception, addr: Addr | None = None) -> None:
        self.ua.stats[what] += 1
        key = (what, type(exc).__name__)
        extra = {"why": f"{type(exc).__name__}: {exc}"[:200], **({"peer": f"{addr[0]}:{addr[1]}"} if addr else {})}
        if key in self._failures_logged:
            log.debug(f"sip {what} again", extra=extra)
            return
        self._failures_logged.add(key)
        log.error(f"sip {what}: logged once per kind, then counted", exc_info=exc, extra=extra)

    def send(self, data: bytes, addr: Addr) -> None:
        raise NotImplementedError

    def emit(self, outputs: list[Output]) -> None:
        """Send the datagrams, hand the updates to the owner; an owner that raises on one is counted
        (`update_failed`) and the outputs after it still go out."""
        for out in outputs:
            if isinstance(out, Datagram):
                self.send(out.data, out.addr)
                continue
            try:
                self.on_update(out)
            except Exception as exc:
                self._failed("update_failed", exc)
        self._wake.set()  # the next timer may have moved

    async def run_timers(self) -> None:
        while True:
            self._wake.clear()
            at = self.ua.get_timer()
            delay = 3600.0 if at is None else max(0.0, at - self._now())
            if await wait_event(self._wake, delay):
                continue
            try:
                outputs = self.ua.handle_timer(self._now())
            except Exception as exc:  # a fault of ours: the timers of every other call go on
                self._failed("timer_failed", exc)
                await wait_event(self._wake, 0.5)  # a timer that keeps failing is not a busy loop
                continue
            self.emit(outputs)


class UdpEndpoint(_Shell, asyncio.DatagramProtocol):
    def __init__(self, ua: UserAgent, on_update: OnUpdate, allowed: Networks) -> None:
        super().__init__(ua, on_update, allowed)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        if self.admits(addr[0]):
            self.deliver(data, (addr[0], addr[1]))

    def send(self, data: bytes, addr: Addr) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)


_LENGTH = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(\d+)[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)
_LENGTH_ANY = re.compile(rb"^(?:content-length|l)[ \t]*:", re.IGNORECASE | re.MULTILINE)
# a start line: a status line, or a method token, something, and a SIP version (RFC 3261 §7.1, §7.2); what
# is wrong in it beyond that is the codec's to answer with a 400
_START = re.compile(rb"^(?:SIP/|[A-Za-z0-9\-.!%*_+`'~]+ +[^\r\n]*SIP/)", re.IGNORECASE)
MAX_START_LINE = 8 * 1024


class FramingError(SipError, ValueError):
    """A byte stream that cannot be split into SIP messages (a remote fault): the connection is closed."""


class StreamFramer:
    """Splits a SIP byte stream into messages by Content-Length (RFC 3261 §18.3). Sans-IO, total.

    `feed` returns the messages complete so far. A stream that cannot be framed — a first line that is not
    a SIP start line, headers over 64 KiB or a start line over 8 KiB, no Content-Length or more than one, a
    Content-Length that is not a number or takes the message over 64 KiB — sets `error` (the messages
    before it are still returned) and takes no more bytes: its connection is to be closed (RFC 4475 §3.1.2.3,
    §3.3.9)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.error: FramingError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        self._buffer += data
        out: list[bytes] = []
        try:
            self._frame(out)
        except FramingError as exc:
            self.error = exc
            self._buffer.clear()
        return out

    def _frame(self, out: list[bytes]) -> None:
        while True:
            while self._buffer[:2] == b"\r\n" or self._buffer[:1] == b"\n":  # keepalives between messages
                del self._buffer[: 2 if self._buffer[:2] == b"\r\n" else 1]
            first = self._buffer.find(b"\n", 0, MAX_START_LINE + 1)
            if first < 0:
                if len(self._buffer) > MAX_START_LINE:
                    raise FramingError("no start line in the first 8 KiB")
                return
            if not _START.match(self._buffer[:first]):
                raise FramingError(f"not a SIP start line: {bytes(self._buffer[: min(first, 40)])!r}")
            crlf, lf = self._buffer.find(b"\r\n\r\n"), self._buffer.find(b"\n\n")
            ends = [(at, size) for at, size in ((crlf, 4), (lf, 2)) if at >= 0]
            if not ends:
                if len(self._buffer) > MAX_MESSAGE:
                    raise FramingError("headers over 64 KiB")
                return
            end, size = min(ends)
            head = bytes(self._buffer[: end + size])
            found = _LENGTH_ANY.findall(head)
            if len(found) != 1:
                raise FramingError("no Content-Length on a stream transport" if not found else "Content-Length twice")
            match = _LENGTH.search(head)
            if match is None or len(match.group(1)) > 10:
                raise FramingError("a Content-Length that is not a number in range")
            total = end + size + int(match.group(1))
            if total > MAX_MESSAGE:
                raise FramingError("message over 64 KiB")
            if len(self._buffer) < total:
                return
            out.append(bytes(self._buffer[:total]))
            del self._buffer[:total]


UNANSWERED_KEPT = 1000  # messages a new connection keeps until the peer's first byte (see _Connection)


class _Connection(asyncio.Protocol):
    def __init__(self, shell: TcpEndpoint, link: _Link | None = None) -> None:
        self.shell = shell
        self.link = link  # the PBX this connection was opened to (None: one the PBX opened to our listener)
        self.peer: Addr | None = None
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        # what we wrote before the peer sent a byte: a TLS 1.3 server refuses our certificate (or its
        # absence) only after the client's side of the handshake is done, by an alert that ends the
        # connection; those messages then fail with the TLS reason instead of waiting for Timer B
        self.unanswered: list[bytes] | None = []
        self.closed_why: str | None = None  # why we closed it ourselves

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        host, port = self.transport.get_extra_info("peername")[:2]
        self.peer = (host, port)
        if not self.shell.admits(host):
            self.transport.close()
            return
        self.shell.connections[self.peer] = self

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        self.unanswered = None
        for message in self.framer.feed(data):
            self.shell.deliver(message, self.peer)
        if (exc := self.framer.error) is not None and not self.transport.is_closing():
            log.info("closing a SIP connection", extra={"peer": f"{self.peer[0]}:{self.peer[1]}", "why": str(exc)})
            self.shell.ua.stats["framing_error"] += 1
            self.closed_why = f"closed by us: {exc}"
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.shell.connections.get(self.peer) is self:
            del self.shell.connections[self.peer]
        if not self.lost.done():
            self.lost.set_result(None)
        link = self.link
        refused = False  # a handshake the PBX refused after our side of it: a LinkFailed, not a LinkLost
        if isinstance(exc, ssl.SSLError) and self.unanswered and link is not None:
            refused = True
            self.shell.fail(link, self.unanswered, self.shell.failure(link, exc))
        self.unanswered = None
        if link is not None and link.connection is self:
            link.connection = None
            if not self.shell.closed and not refused:  # the PBX (or the network) ended it, not our shutdown
                why = self.closed_why or (
                    "closed by the peer" if exc is None else (getattr(exc, "strerror", None) or str(exc))
                )
                self.shell.on_update(LinkLost(self.shell.transport_name, link.pbx, why))

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            if self.unanswered is not None:
                self.unanswered.append(data)
                if len(self.unanswered) > UNANSWERED_KEPT:  # a peer this silent is not refusing a handshake
                    self.unanswered = None


@dataclass(eq=False)
class _Link:
    """Our connection to one PBX: opened on the first message for it, again on the next one after it drops;
    what is sent meanwhile waits for it."""

    pbx: Addr
    server_name: str | None = None  # TLS: the name its certificate must carry
    connection: _Connection | None = None
    queued: list[bytes] = dataclasses.field(default_factory=list)
    connecting: bool = False


class TcpEndpoint(_Shell):
    """SIP over TCP: one connection per PBX (`pbx`, then `more` PBXs), plus a listener for the PBXs' own."""

    transport_name = "tcp"

    def __init__(
        self, ua: UserAgent, on_update: OnUpdate, allowed: Networks, pbx: Addr, more: Sequence[Addr] = ()
    ) -> None:
        super().__init__(ua, on_update, allowed)
        self.pbx = pbx
        self.links: dict[Addr, _Link] = {a: _Link(a) for a in (pbx, *more)}
        self.connections: dict[Addr, _Connection] = {}
        self.server: asyncio.Server | None = None
        self.closed = False
        # the connections being opened to PBXs are children of this TaskGroup (run_timers' own); links that
        # asked for one before it started wait here for it
        self._tasks: asyncio.TaskGroup | None = None
        self._waiting: list[_Link] = []

    @property
    def pbx_connection(self) -> _Connection | None:
        """The connection to the first PBX, if it is open."""
        return self.links[self.pbx].connection

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host, port)
        return cast(int, self.server.sockets[0].getsockname()[1])

    def send(self, data: bytes, addr: Addr) -> None:
        """On the connection `addr` came in on (a response), else on our link to the PBX at `addr` (a
        request; what is for no PBX we know goes to the first one)."""
        if self.closed:
            return
        conn = self.connections.get(addr)
        if conn is not None:
            conn.write(data)
            return
        link = self.links.get(addr) or self.links[self.pbx]
        if link.connection is not None:
            link.connection.write(data)
            return
        link.queued.append(data)
        if not link.connecting:
            link.connecting = True
            self._start_connect(link)

    def _start_connect(self, link: _Link) -> None:
        if self._tasks is None:  # the shell is not running yet: its TaskGroup opens it when it starts
            self._waiting.append(link)
            return
        self._tasks.create_task(self._connect(link), name=f"sip-{self.transport_name}-connect")

    async def run_timers(self) -> None:
        """The shell's life: the UA's timer and, as children of one TaskGroup, each connection being opened
        to a PBX. A fault in opening one is contained in its task (`_connect`); cancelled, the group
        cancels the connections being opened."""
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            try:
                waiting, self._waiting = self._waiting, []
                for link in waiting:
                    self._start_connect(link)
                await super().run_timers()
            finally:
                self._tasks = None

    async def _dial(self, link: _Link) -> _Connection:
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: _Connection(self, link), link.pbx[0], link.pbx[1]
        )
        return conn

    def failure(self, link: _Link, exc: OSError) -> LinkFailed:
        return LinkFailed("tcp", exc.strerror or str(exc), pbx=link.pbx)

    def fail(self, link: _Link, messages: list[bytes], failure: LinkFailed) -> None:
        """The link failed under `messages`: tell the owner, and every INVITE among them fails now
        (transport error, with the TLS reason in its evidence); other requests are left to Timer F."""
        log.warning(
            f"sip {failure.transport} connection failed",
            extra={"pbx": f"{link.pbx[0]}:{link.pbx[1]}", "why": failure.why},
        )
        self.ua.stats[f"{failure.transport}_connect_failed"] += 1
        self.on_update(failure)
        evidence = () if failure.tls is None else (("tls", failure.tls),)
        for data in messages:
            outputs = self.ua.transport_error(data, failure.why)
            self.emit([dataclasses.replace(o, evidence=evidence) if isinstance(o, CallUpdate) else o for o in outputs])

    async def _connect(self, link: _Link) -> None:
        """Open `link`'s connection in a task of the shell's TaskGroup. A fault of ours in it (the owner or
        the UA raising on the failure) is counted (`open_failed`) and logged, and its queued messages are
        left to their timers: the other connections and the timers go on."""
        try:
            await self._open(link)
        except Exception as exc:
            link.queued = []
            self._failed("open_failed", exc, link.pbx)

    async def _open(self, link: _Link) -> None:
        try:
            conn = await self._dial(link)
        except OSError as exc:
            queued, link.queued = link.queued, []
            if not self.closed:
                self.fail(link, queued, self.failure(link, exc))
            return
        finally:
            link.connecting = False
        if self.closed:
            if conn.transport is not None:
                conn.transport.close()
            return
        link.connection = conn
        queued, link.queued = link.queued, []
        for data in queued:
            conn.write(data)

    def close(self) -> None:
        self.closed = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.close()


TLS_PORT = 5061  # RFC 3261 §19.1.2: the default port of sips: URIs


def client_context(ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    """The TLS client side: TLS >= 1.2, the server's certificate and name always verified, against
    `ca_file` alone when it is given (else the system's CAs); our own certificate when `cert_file` is set
    (its key in `key_file`, or in the same file). Raises OSError / ssl.SSLError for files it cannot use."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


def tls_reason(exc: OSError) -> str:
    """What went wrong in a TLS handshake, in OpenSSL's words (`certificate verify failed: Hostname
    mismatch, certificate is not valid for 'pbx.example'.`, `... certificate has expired`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"handshake failed: {(exc.reason or str(exc)).lower().replace('_', ' ')}"
    return f"handshake failed: {exc.strerror or exc}"


class TlsEndpoint(TcpEndpoint):
    """SIP over TLS to each PBX: the TCP shell's framing on verified TLS connections, no listener. Each PBX's
    certificate is checked against its own name: `server_names[addr]`, else `server_name`, else its host."""

    transport_name = "tls"

    def __init__(
        self,
        ua: UserAgent,
        on_update: OnUpdate,
        allowed: Networks,
        pbx: Addr,
        context: ssl.SSLContext,
        server_name: str | None = None,
        handshake_timeout_s: float = 10.0,
        more: Sequence[Addr] = (),
        server_names: Mapping[Addr, str] | None = None,
    ) -> None:
        super().__init__(ua, on_update, allowed, pbx, more)
        assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
        self.context = context
        for addr, link in self.links.items():
            link.server_name = (server_names or {}).get(addr) or server_name or addr[0]
        self.handshake_timeout_s = handshake_timeout_s

    @property
    def server_name(self) -> str | None:
        """The name the first PBX's certificate must carry."""
        return self.links[self.pbx].server_name

    async def _dial(self, link: _Link) -> _Connection:
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: _Connection(self, link),
            link.pbx[0],
            link.pbx[1],
            ssl=self.context,
            server_hostname=link.server_name,
            ssl_handshake_timeout=self.handshake_timeout_s,
        )
        return conn

    def failure(self, link: _Link, exc: OSError) -> LinkFailed:
        if isinstance(exc, ssl.SSLError | ConnectionAbortedError):
            reason = tls_reason(exc)
            return LinkFailed("tls", f"tls: {reason}", reason, pbx=link.pbx)
        return LinkFailed("tls", exc.strerror or str(exc), pbx=link.pbx)  # TCP itself failed: refused, unreachable
