"""Client transactions (RFC 3261 §17.1, RFC 6026), sans-IO: messages and `now` in, events out.

Time is an input and timers are an output: `get_timer()` says when the transaction next needs waking,
the shell calls `handle_timer(now)`. Nothing here imports asyncio or socket.

INVITE client:     Calling --1xx--> Proceeding --2xx--> Accepted (Timer M) --> Terminated
                      |  \\--300-699--> Completed (ACK sent; Timer D) --> Terminated
                      \\-- Timer B --> Terminated (timeout)
Non-INVITE client: Trying --1xx--> Proceeding --final--> Completed (Timer K) --> Terminated
                      \\-- Timer F --> Terminated (timeout)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .message import Request, Response
from .requests import in_transaction

T1, T2, T4 = 0.5, 4.0, 5.0


class State(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Transmit:
    """Bytes for the transport: the request, a retransmission of it, or the ACK of a non-2xx final."""

    message: Request
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    response: Response
    retransmission: bool = False


@dataclass(frozen=True, slots=True)
class TimedOut:
    timer: str  # "B" or "F"


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Event = Transmit | ResponseReceived | TimedOut | Terminated


def ack_for(request: Request, response: Response) -> Request:
    """The ACK of a non-2xx final response, inside the INVITE transaction (RFC 3261 §17.1.1.3)."""
    return in_transaction(request, "ACK", response.headers.get("to"))


class _Timers:
    def __init__(self) -> None:
        self.due: dict[str, float] = {}

    def start(self, name: str, at: float) -> None:
        self.due[name] = at

    def stop(self, *names: str) -> None:
        for n in names:
            self.due.pop(n, None)

    def next(self) -> float | None:
        return min(self.due.values()) if self.due else None

    def fired(self, now: float) -> list[str]:
        names = sorted((n for n, at in self.due.items() if at <= now), key=lambda n: self.due[n])
        for n in names:
            del self.due[n]
        return names


class _ClientTransaction:
    """What both client transactions share: the request, the transport's reliability, timers, events."""

    def __init__(self, request: Request, reliable: bool, state: State, t1: float) -> None:
        self.request = request
        self.reliable = reliable
        self.state = state
        self.t1 = t1
        self.timers = _Timers()
        self.pending: list[Event] = [Transmit(request)]

    def get_timer(self) -> float | None:
        return self.timers.next()

    def events(self) -> list[Event]:
        out, self.pending = self.pending, []
        return out


class InviteClientTransaction(_ClientTransaction):
    def __init__(self, request: Request, reliable: bool, now: float, t1: float = T1) -> None:
        super().__init__(request, reliable, State.CALLING, t1)
        self._a_interval = t1
        self._ack: Request | None = None
        if not reliable:
            self.timers.start("A", now + t1)
        self.timers.start("B", now + 64 * t1)

    @property
    def provisional_seen(self) -> bool:
        """A CANCEL may be sent only once a provisional response arrived (RFC 3261 §9.1)."""
        return self.state is State.PROCEEDING

    def receive(self, response: Response, now: float) -> list[Event]:
        code = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self.timers.stop("A")
            if code < 200:
                self.state = State.PROCEEDING
                self.timers.stop("B")  # a ringing call waits for its final as long as the TU lets it
                self.pending.append(ResponseReceived(response))
            elif code < 300:
                self.state = State.ACCEPTED
                self.timers.stop("B")
                self.timers.start("M", now + 64 * self.t1)
                self.pending.append(ResponseReceived(response))
            else:
                self.state = State.COMPLETED
                self.timers.stop("B")
                self._ack = ack_for(self.request, response)
                self.pending += [Transmit(self._ack), ResponseReceived(response)]
                self.timers.start("D", now + (0.0 if self.reliable else 32.0))
        elif self.state is State.COMPLETED and code >= 300:
            assert self._ack is not None
            self.pending.append(Transmit(self._ack, retransmission=True))  # the final came again: ACK again
        elif self.state is State.ACCEPTED and 200 <= code < 300:
            self.pending.append(ResponseReceived(response, retransmission=True))  # the TU ACKs every 2xx
        return self.events()

    def handle_timer(self, now: float) -> list[Event]:
        for name in self.timers.fired(now):
            if name == "A" and self.state is State.CALLING:
                self.pending.append(Transmit(self.request, retransmission=True))
                self._a_interval *= 2
                self.timers.start("A", now + self._a_interval)
            elif name == "B" and self.state is State.CALLING:  # §17.1.1.2: not once a provisional came
                self._terminate()
                self.pending[:0] = [TimedOut("B")]
            elif name in ("D", "M"):
                self._terminate()
        return self.events()

    def _terminate(self) -> None:
        self.state = State.TERMINATED
        self.timers.due.clear()
        self.pending.append(Terminated())


class NonInviteClientTransaction(_ClientTransaction):
    def __init__(self, request: Request, reliable: bool, now: float, t1: float = T1) -> None:
        super().__init__(request, reliable, State.TRYING, t1)
        self._e_interval = t1
        if not reliable:
            self.timers.start("E", now + t1)
        self.timers.start("F", now + 64 * t1)

    def receive(self, response: Response, now: float) -> list[Event]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []  # retransmitted finals are absorbed in Completed
        if response.status < 200:
            self.state = State.PROCEEDING
            self.pending.append(ResponseReceived(response))
        else:
            self.state = State.COMPLETED
            self.timers.stop("E", "F")
            self.timers.start("K", now + (0.0 if self.reliable else T4))
            self.pending.append(ResponseReceived(response))
        return self.events()

    def handle_timer(self, now: float) -> list[Event]:
        for name in self.timers.fired(now):
            if name == "E" and self.state in (State.TRYING, State.PROCEEDING):
                self.pending.append(Transmit(self.request, retransmission=True))
                self._e_interval = T2 if self.state is State.PROCEEDING else min(self._e_interval * 2, T2)
                self.timers.start("E", now + self._e_interval)
            elif name == "F" and self.state in (State.TRYING, State.PROCEEDING):
                self.state = State.TERMINATED
                self.timers.due.clear()
                self.pending += [TimedOut("F"), Terminated()]
            elif name == "K":
                self.state = State.TERMINATED
                self.pending.append(Terminated())
        return self.events()
