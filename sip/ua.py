"""The user agent (sans-IO): routes datagrams to calls by Call-ID, answers what no call owns.

Out of a dialog: OPTIONS gets 200 (PBX keepalives), a BYE/CANCEL for an unknown dialog 481, an INVITE
603 (telgate places calls, it does not take them), anything else 501. A malformed request gets 400 (505
for an unknown SIP version, 513 for one over 64 KiB) when its Via, From, To, Call-ID and CSeq can still be
read, free of control characters; else it is dropped. A malformed response is dropped. Each is counted in
`stats` (`malformed_request`, `malformed_response`) and logged at debug level, one line per message.

What the owner gives is checked before anything is sent or kept: a number or caller ID that cannot be
written into an INVITE ends the call at once (`Ended(FAILED)`, "refused: ..."), a transfer target that is
not a SIP or tel URI (`sip.uri.check_target`) ends the transfer (`Transferred(ok=False)`); both counted
(`place_refused`, `transfer_refused`).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import re
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .call import Call, CallEvent, Ended, EndKind, Send, Transferred, UacConfig, respond
from .identity import Caller
from .message import Headers, HeaderValueError, ParseError, Request, Response, parse, unsafe
from .register import Registration
from .requests import build, tagged
from .transaction import NonInviteClientTransaction, ResponseReceived, Terminated, TimedOut, Transmit

Addr = tuple[str, int]
log = logging.getLogger("telgate.sip")


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class CallUpdate:
    call_id: str
    event: CallEvent
    evidence: tuple[tuple[str, str], ...] = ()  # what the transport adds (e.g. ("tls", reason) for a bad certificate)


@dataclass(frozen=True, slots=True)
class PingAnswered:
    """The PBX answered our OPTIONS keepalive (any final response means it is alive)."""

    status: int
    rtt_s: float
    pbx: Addr | None = None  # which PBX answered (the address the OPTIONS went to)


@dataclass(frozen=True, slots=True)
class PbxAnswered:
    """A SIP response came from a PBX (to any request of ours: OPTIONS, INVITE, REGISTER, in-dialog): evidence
    for `sip.health` that it is there. `pbx`: where the request went (a stray response: where it came from)."""

    pbx: Addr
    method: str


@dataclass(frozen=True, slots=True)
class PbxSilent:
    """A request to a PBX had no response at all: an OPTIONS keepalive's Timer F (`sent_at`: when it went
    out), an INVITE's Timer B."""

    pbx: Addr
    method: str
    sent_at: float | None = None


Output = Datagram | CallUpdate | PingAnswered | PbxAnswered | PbxSilent
KNOWN_METHODS = frozenset(
    {"INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "REFER", "NOTIFY", "INFO", "UPDATE"}
)
_HDR = re.compile(rb"^(via|v|from|f|to|t|call-id|i|cseq)[ \t]*:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


def _transaction_key(req: Request) -> tuple[str, str, str]:
    """A server transaction: the top Via's branch, the Call-ID and the CSeq (RFC 3261 §17.2.3)."""
    via = (req.headers.get_all("via") or [""])[0]
    branch = via.partition("branch=")[2].split(";")[0].strip()
    return branch, req.headers.get("call-id") or "", req.headers.get("cseq") or ""


PHRASES = {505: "Version Not Supported", 513: "Message Too Large"}


def bad_request(data: bytes, reason: str, status: int) -> Response | None:
    """A best-effort 400/505/513 to a request we could not parse, if we can tell where to send it: None for a
    response, or when the Via, From, To, Call-ID and CSeq to copy are not all there, each non-empty and
    free of control characters (we never copy what we could not write)."""
    if data[:4].upper() == b"SIP/":
        return None
    found: dict[str, str] = {}
    for name, value in _HDR.findall(data[:8192]):
        key = {"v": "via", "f": "from", "t": "to", "i": "call-id"}.get(name.decode().lower(), name.decode().lower())
        found.setdefault(key, value.decode("utf-8", "replace").strip())
    wanted = ("via", "from", "to", "call-id", "cseq")
    if not all(found.get(k) and unsafe(found[k]) is None for k in wanted):
        return None
    h = Headers()
    for k in wanted:
        h = h.with_(k, found[k])
    phrase = PHRASES.get(status) or f"Bad Request ({reason[:60]})"
    return Response(status, phrase if unsafe(phrase) is None else "Bad Request", h)


@dataclass
class UserAgent:
    cfg: UacConfig
    pbx: Addr
    token: Callable[[], str]
    calls: dict[str, Call] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)
    pings: dict[str, tuple[NonInviteClientTransaction, float, Addr]] = field(default_factory=dict)
    registration: Registration | None = None  # with the default PBX
    # several PBXs: a registration with each other one, and where its REGISTERs go
    more_registrations: list[tuple[Registration, Addr]] = field(default_factory=list)
    responses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (method, code) received
    retransmissions: Counter[str] = field(default_factory=Counter)  # requests re-sent by Timer A / E
    _heap: list[tuple[float, str]] = field(default_factory=list)  # (when, call id), stale entries skipped
    _due: dict[str, float] = field(default_factory=dict)  # call id -> its current next timer
    _answered: dict[tuple[str, str, str], bytes] = field(default_factory=dict)  # request -> our response
    _answered_order: deque[tuple[float, tuple[str, str, str]]] = field(default_factory=deque)
    # calls not ended, by state ("ringing" until a 2xx, then "answered"): the one count of dialogs that the
    # metrics, the dispatcher's room and the drain read (a call lingers in `calls` for Timer D/K after it ends)
    _state: dict[str, str] = field(default_factory=dict)
    _live: Counter[str] = field(default_factory=Counter)
    # several PBXs: the address each call's requests go to (its INVITE's PBX, for every in-dialog request)
    _routes: dict[str, Addr] = field(default_factory=dict)

    def _reg_out(self, requests: list[Request], to: Addr | None = None) -> list[Output]:
        return [Datagram(r.encode(), self.pbx if to is None else to) for r in requests]

    def _registrations(self) -> list[tuple[Registration, Addr]]:
        first = [(self.registration, self.pbx)] if self.registration is not None else []
        return first + self.more_registrations

    def ping(self, now: float, pbx: tuple[str, Addr] | None = None) -> list[Output]:
        """An OPTIONS keepalive to the PBX (or to `pbx`: its `host:port` and address), out of any dialog."""
        call_id = f"ka-{self.token()}@{self.cfg.local_host}"
        cfg = self.cfg if pbx is None else dataclasses.replace(self.cfg, pbx=pbx[0])
        addr = self.pbx if pbx is None else pbx[1]
        options = build(
            "OPTIONS",
            cfg.uri(None, cfg.pbx),
            via=cfg.via(self.token()),
            from_=tagged(f"<sip:{cfg.from_user}@{cfg.domain}>", self.token()),
            to=f"<{cfg.uri(None, cfg.pbx)}>",
            call_id=call_id,
            number=1,
            headers=[("Accept", "application/sdp")],
        )
        tx = NonInviteClientTransaction(options, cfg.reliable, now, cfg.t1)
        self.pings[call_id] = (tx, now, addr)
        return [Datagram(e.message.encode(), addr) for e in tx.events() if isinstance(e, Transmit)]

    def place(
        self,
        number: str,
        ring_timeout_s: float,
        sdp: bytes,
        now: float,
        caller: Caller | None = None,
        pbx: tuple[str, Addr] | None = None,
    ) -> tuple[str, list[Output]]:
        """A new call to `number`; with `pbx` (`host:port`, address) to that PBX instead of the default one,
        and every request of its dialog with it."""
        call_id = f"{self.token()}{self.token()}@{self.cfg.local_host}"
        try:
            cfg = self.cfg if pbx is None else dataclasses.replace(self.cfg, pbx=pbx[0])
            call = Call(cfg, number, call_id, ring_timeout_s, sdp, token=self.token, caller=caller)
        except HeaderValueError as exc:  # nothing sent, nothing kept: the attempt fails now
            self.stats["place_refused"] += 1
            return call_id, [CallUpdate(call_id, Ended(EndKind.FAILED, None, f"refused: {exc}"))]
        if pbx is not None:
            self._routes[call_id] = pbx[1]
        self.calls[call_id] = call
        self._state[call_id] = "ringing"
        self._live["ringing"] += 1
        return call_id, self._outputs(call, call.start(now))

    def dialogs(self, state: str | None = None) -> int:
        """Calls placed and not ended: all of them, or those "ringing" / "answered"."""
        return self._live[state] if state is not None else self._live["ringing"] + self._live["answered"]

    def cancel(self, call_id: str, now: float) -> list[Output]:
        call = self.calls.get(call_id)
        return [] if call is None else self._outputs(call, call.cancel(now))

    def hangup(self, call_id: str, now: float) -> list[Output]:
        call = self.calls.get(call_id)
        return [] if call is None else self._outputs(call, call.hangup(now))

    def transport_error(self, data: bytes, why: str) -> list[Output]:
        """A message could not be sent: a call whose INVITE it was fails now."""
        try:
            message = parse(data)
        except ParseError:
            return []
        call = self.calls.get(message.headers.get("call-id") or "")
        if call is None or not isinstance(message, Request) or message.method != "INVITE":
            return []
        return self._outputs(call, call.transport_error(why))

    def transfer(self, call_id: str, target: str, now: float) -> list[Output]:
        """REFER the call to `target`; a target `sip.uri.check_target` refuses is a failed transfer (nothing
        sent), which the owner handles as any other."""
        call = self.calls.get(call_id)
        if call is None:
            return []
        try:
            events = call.transfer(target, now)
        except HeaderValueError as exc:
            self.stats["transfer_refused"] += 1
            return [CallUpdate(call_id, Transferred(False, None, f"refused: {exc}"))]
        return self._outputs(call, events)

    def _outputs(self, call: Call, events: list[CallEvent]) -> list[Output]:
        out: list[Output] = []
        to = self._routes.get(call.call_id, self.pbx)
        for e in events:
            if isinstance(e, Send):
                if e.retransmission and isinstance(e.message, Request):
                    self.retransmissions[e.message.method] += 1
                out.append(Datagram(e.message.encode(), to))
            else:
                out.append(CallUpdate(call.call_id, e))
        self._track(call)
        at = call.get_timer()
        if call.ended and at is None:
            self.calls.pop(call.call_id, None)
            self._routes.pop(call.call_id, None)
        self._schedule(call.call_id, at)
        return out

    def _track(self, call: Call) -> None:
        was = self._state.get(call.call_id)
        if was is None:
            return
        now = None if call.ended else ("answered" if call.answered_at is not None else "ringing")
        if now == was:
            return
        self._live[was] -= 1
        if now is None:
            del self._state[call.call_id]
        else:
            self._state[call.call_id] = now
            self._live[now] += 1

    def _schedule(self, call_id: str, at: float | None) -> None:
        """Keep the call's next timer in the heap; older entries for it go stale (O(log n) per change)."""
        if self._due.get(call_id) == at:
            return
        if at is None:
            self._due.pop(call_id, None)
            return
        self._due[call_id] = at
        heapq.heappush(self._heap, (at, call_id))

    def _next_call_timer(self) -> float | None:
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: the call moved its timer or ended
        return heap[0][0] if heap else None

    def get_timer(self) -> float | None:
        times = [t] if (t := self._next_call_timer()) is not None else []
        times += [t for tx, _, _ in self.pings.values() if (t := tx.get_timer()) is not None]
        times += [t for reg, _ in self._registrations() if (t := reg.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Output]:
        out: list[Output] = []
        for reg, to in self._registrations():
            if (t := reg.get_timer()) is not None and t <= now:
                out += self._reg_out(reg.handle_timer(now), to)
        for call_id, (tx, sent, addr) in list(self.pings.items()):
            t = tx.get_timer()
            if t is not None and t <= now:
                for e in tx.handle_timer(now):
                    if isinstance(e, Transmit):
                        self.retransmissions["OPTIONS"] += 1
                        out.append(Datagram(e.message.encode(), addr))
                    elif isinstance(e, TimedOut):
                        out.append(PbxSilent(addr, "OPTIONS", sent))
                    elif isinstance(e, Terminated):
                        self.pings.pop(call_id, None)
        while (t := self._next_call_timer()) is not None and t <= now:
            _, call_id = heapq.heappop(self._heap)
            self._due.pop(call_id, None)
            call = self.calls.get(call_id)
            if call is not None:
                to = self._routes.get(call_id, self.pbx)
                events = call.handle_timer(now)
                out += self._outputs(call, events)
                # a call that ends `failed` with no status on its own timer ended by Timer B: its INVITE had no
                # response at all (call.py's only such row: NO_RESPONSE in INVITING)
                if any(isinstance(e, Ended) and e.kind is EndKind.FAILED and e.status is None for e in events):
                    out.append(PbxSilent(to, "INVITE"))
        return out

    def receive(self, data: bytes, addr: Addr, now: float) -> list[Output]:
        try:
            message = parse(data)
        except ParseError as exc:
            reply = bad_request(data, exc.reason, exc.status)
            kind = "malformed_request" if reply is not None or data[:4].upper() != b"SIP/" else "malformed_response"
            self.stats[kind] += 1
            log.debug(
                f"sip {kind.replace('_', ' ')} {'answered' if reply is not None else 'dropped'}",
                extra={"peer": f"{addr[0]}:{addr[1]}", "why": exc.reason[:200], "status": exc.status},
            )
            return [] if reply is None else [Datagram(reply.encode(), addr)]
        call_key = message.headers.get("call-id") or ""
        if isinstance(message, Response):
            method = (message.headers.get("cseq") or "").rpartition(" ")[2].upper()
            method = method if method in KNOWN_METHODS else "other"
            self.responses[(method, message.status)] += 1
            for reg, to in self._registrations():
                if call_key == reg.call_id:
                    return [PbxAnswered(to, method), *self._reg_out(reg.receive(message, now), to)]
            ping = self.pings.get(call_key)
            if ping is not None:
                to = ping[2]
            else:
                to = self._routes.get(call_key, self.pbx) if call_key in self.calls else addr
            return [PbxAnswered(to, method), *self._receive(message, call_key, addr, now)]
        return self._receive(message, call_key, addr, now)

    def _receive(self, message: Request | Response, call_key: str, addr: Addr, now: float) -> list[Output]:
        ping = self.pings.get(call_key)
        if ping is not None and isinstance(message, Response):
            tx, sent, pinged = ping
            out_ping: list[Output] = []
            for e in tx.receive(message, now):
                if isinstance(e, ResponseReceived) and e.response.status >= 200:
                    out_ping.append(PingAnswered(e.response.status, now - sent, pinged))
                    self.pings.pop(call_key, None)
            return out_ping
        if isinstance(message, Request) and message.method != "ACK":
            self._expire(now)
            key = _transaction_key(message)
            answered = self._answered.get(key)
            if answered is not None:  # a retransmission: the same response again (RFC 3261 §17.2.2)
                self.stats["request_retransmission"] += 1
                return [Datagram(answered, addr)]
        call = self.calls.get(call_key)
        if call is not None:
            out = self._outputs(call, call.receive(message, now))
            # responses to requests a call received go back where the request came from
            out = [Datagram(o.data, addr) if isinstance(o, Datagram) and o.data[:4] == b"SIP/" else o for o in out]
        elif isinstance(message, Response):
            self.stats["stray_response"] += 1
            return []
        else:
            out = [Datagram(self._out_of_dialog(message).encode(), addr)]
        if isinstance(message, Request) and message.method != "ACK":
            for o in out:
                if isinstance(o, Datagram) and o.data[:4] == b"SIP/":
                    self._remember(_transaction_key(message), o.data, now)
        return out

    def _expire(self, now: float) -> None:
        while self._answered_order and self._answered_order[0][0] <= now:
            _, old = self._answered_order.popleft()
            self._answered.pop(old, None)

    def _remember(self, key: tuple[str, str, str], response: bytes, now: float) -> None:
        """Keep a response to a request for 64 x T1 (Timer J), to answer its retransmissions alike."""
        self._expire(now)
        if key not in self._answered:
            self._answered_order.append((now + 64 * self.cfg.t1, key))
        self._answered[key] = response

    def _out_of_dialog(self, req: Request) -> Response:
        self.stats[f"out_of_dialog_{req.method.lower()}"] += 1
        if req.method == "OPTIONS":
            return respond(req, 200, "OK", to_tag=self.token())
        if req.method in ("BYE", "CANCEL", "NOTIFY", "INFO", "UPDATE", "PRACK"):
            return respond(req, 481, "Call/Transaction Does Not Exist", to_tag=self.token())
        if req.method == "INVITE":
            return respond(req, 603, "Decline", to_tag=self.token())
        return respond(req, 501, "Not Implemented", to_tag=self.token())
