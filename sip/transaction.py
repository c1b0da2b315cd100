"""Client transactions (RFC 3261 §17.1, RFC 6026), sans-IO: responses, timers and `now` in, events out.

Time is an input and timers are an output: `get_timer()` says when the transaction next needs waking,
the shell calls `handle_timer(now)`. Nothing here imports asyncio or socket.

INVITE client:     Calling --1xx--> Proceeding --2xx--> Accepted (Timer M) --> Terminated
                      |  \\--300-699--> Completed (ACK sent; Timer D) --> Terminated
                      \\-- Timer B --> Terminated (timeout)
Non-INVITE client: Trying --1xx--> Proceeding --final--> Completed (Timer K) --> Terminated
                      \\-- Timer F --> Terminated (timeout)

How it is built: what arrives (a response, a timer that fell due) is first named as one `Ev` (`classify`
is the only place that reads a status code); then the table of the transaction's kind, `INVITE_TABLE` or
`NON_INVITE_TABLE`, says for (state, event) the next state and the actions, in order. Entering a state
drops the timers `TIMER_STATES` does not allow in it; actions emit events and arm timers, never change the
state. A (state, event) with no row raises `IllegalTransition` naming the kind, the state and the event.

Rules, INVITE client (§17.1.1, RFC 6026 §8.4):
- Calling: the INVITE is sent; over UDP Timer A resends it at T1, then doubling (2 T1, 4 T1, ...); Timer B
  (64 T1) ends the transaction, timed out, if no response came;
- a provisional in Calling or Proceeding → Proceeding, passed up; A and B stop (a ringing call waits for
  its final as long as the TU lets it, §17.1.1.2);
- a 2xx in Calling or Proceeding → Accepted, passed up, Timer M (64 T1); a 2xx again in Accepted is passed
  up as a retransmission (the TU ACKs every 2xx, §13.2.2.4); M → Terminated;
- 300-699 in Calling or Proceeding → Completed: the ACK is sent inside the transaction (the INVITE's branch,
  §17.1.1.3), then the response passed up; Timer D (32 s over UDP, 0 over a reliable transport); the final
  again in Completed is ACKed again and not passed up; D → Terminated;
- what arrives later (a 1xx or 2xx in Completed, a 1xx or 300-699 in Accepted, anything in Terminated) is
  absorbed.
Rules, non-INVITE client (§17.1.2):
- Trying: the request is sent; over UDP Timer E resends it at T1, doubling up to T2; Timer F (64 T1) ends
  the transaction, timed out, if no final came;
- a provisional in Trying or Proceeding → Proceeding, passed up; E goes on, every T2 from then;
- a final (200-699) in Trying or Proceeding → Completed, passed up, Timer K (T4 over UDP, 0 reliable);
  K → Terminated; what arrives in Completed or Terminated is absorbed.
Timers: `handle_timer(now)` fires the ones due in time order (at the same instant B or F before A or E),
so a late wake-up resends before it gives up, as a punctual one would have; a timer the state change of an
earlier one dropped does not fire.
Checked at import: every response event has a row in every state of its kind (a response can come at any
time), and each timer's rows are exactly the states `TIMER_STATES` allows it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import ClassVar

from .message import Request, Response
from .requests import in_transaction
from .transitions import STAY, step, table
from .transitions import IllegalTransition as IllegalTransition  # raised here: importable from here

T1, T2, T4 = 0.5, 4.0, 5.0
TIMER_D_UDP = 32.0  # RFC 3261 §17.1.1.2: at least 32 s over an unreliable transport


class Kind(StrEnum):
    INVITE = "INVITE"
    NON_INVITE = "non-INVITE"


class State(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    TERMINATED = "terminated"


class Ev(StrEnum):
    """What happened, as `classify` and the timers name it."""

    PROVISIONAL = "provisional"  # 100-199
    SUCCESS = "success"  # 2xx to an INVITE
    FAILURE = "failure"  # 300-699 to an INVITE
    FINAL = "final"  # 200-699 to a non-INVITE request
    TIMER_A = "timer_a"
    TIMER_B = "timer_b"
    TIMER_D = "timer_d"
    TIMER_M = "timer_m"
    TIMER_E = "timer_e"
    TIMER_F = "timer_f"
    TIMER_K = "timer_k"


class Do(StrEnum):
    """The actions; `Do.X` runs `_ClientTransaction._x`."""

    PASS_UP = "pass_up"  # the response to the TU
    PASS_UP_AGAIN = "pass_up_again"  # ... as a retransmission
    SEND_ACK = "send_ack"  # the ACK of a non-2xx final
    RESEND_ACK = "resend_ack"
    RESEND_A = "resend_a"  # the request again, Timer A doubled
    RESEND_E = "resend_e"  # the request again, Timer E doubled up to T2 (T2 once a provisional came)
    START_D = "start_d"
    START_M = "start_m"
    START_K = "start_k"
    TIME_OUT = "time_out"  # TimedOut, naming the timer
    TERMINATE = "terminate"


class Timer(StrEnum):
    A = "A"
    B = "B"
    D = "D"
    M = "M"
    E = "E"
    F = "F"
    K = "K"


TIMER_EVENT = {
    Timer.A: Ev.TIMER_A,
    Timer.B: Ev.TIMER_B,
    Timer.D: Ev.TIMER_D,
    Timer.M: Ev.TIMER_M,
    Timer.E: Ev.TIMER_E,
    Timer.F: Ev.TIMER_F,
    Timer.K: Ev.TIMER_K,
}
RESEND_TIMERS = frozenset({Timer.A, Timer.E})
TIMER_STATES: dict[Timer, frozenset[State]] = {
    Timer.A: frozenset({State.CALLING}),
    Timer.B: frozenset({State.CALLING}),
    Timer.D: frozenset({State.COMPLETED}),
    Timer.M: frozenset({State.ACCEPTED}),
    Timer.E: frozenset({State.TRYING, State.PROCEEDING}),
    Timer.F: frozenset({State.TRYING, State.PROCEEDING}),
    Timer.K: frozenset({State.COMPLETED}),
}

# -- the tables ------------------------------------------------------------------------------------

CALLING, TRYING, PROCEEDING = State.CALLING, State.TRYING, State.PROCEEDING
ACCEPTED, COMPLETED, TERMINATED = State.ACCEPTED, State.COMPLETED, State.TERMINATED
Row = tuple[tuple[State, ...], Ev, State | None, tuple[Do, ...]]

INVITE_STATES = (CALLING, PROCEEDING, ACCEPTED, COMPLETED, TERMINATED)
INVITE_RESPONSES = (Ev.PROVISIONAL, Ev.SUCCESS, Ev.FAILURE)
INVITE_TIMERS = (Timer.A, Timer.B, Timer.D, Timer.M)
INVITE_ROWS: list[Row] = [
    ((CALLING, PROCEEDING), Ev.PROVISIONAL, PROCEEDING, (Do.PASS_UP,)),
    ((CALLING, PROCEEDING), Ev.SUCCESS, ACCEPTED, (Do.START_M, Do.PASS_UP)),
    ((CALLING, PROCEEDING), Ev.FAILURE, COMPLETED, (Do.SEND_ACK, Do.PASS_UP, Do.START_D)),
    ((ACCEPTED,), Ev.SUCCESS, STAY, (Do.PASS_UP_AGAIN,)),
    ((ACCEPTED,), Ev.PROVISIONAL, STAY, ()),
    ((ACCEPTED,), Ev.FAILURE, STAY, ()),
    ((COMPLETED,), Ev.FAILURE, STAY, (Do.RESEND_ACK,)),
    ((COMPLETED,), Ev.PROVISIONAL, STAY, ()),
    ((COMPLETED,), Ev.SUCCESS, STAY, ()),
    *(((TERMINATED,), ev, STAY, ()) for ev in INVITE_RESPONSES),
    ((CALLING,), Ev.TIMER_A, STAY, (Do.RESEND_A,)),
    ((CALLING,), Ev.TIMER_B, TERMINATED, (Do.TIME_OUT, Do.TERMINATE)),
    ((COMPLETED,), Ev.TIMER_D, TERMINATED, (Do.TERMINATE,)),
    ((ACCEPTED,), Ev.TIMER_M, TERMINATED, (Do.TERMINATE,)),
]

NON_INVITE_STATES = (TRYING, PROCEEDING, COMPLETED, TERMINATED)
NON_INVITE_RESPONSES = (Ev.PROVISIONAL, Ev.FINAL)
NON_INVITE_TIMERS = (Timer.E, Timer.F, Timer.K)
NON_INVITE_ROWS: list[Row] = [
    ((TRYING, PROCEEDING), Ev.PROVISIONAL, PROCEEDING, (Do.PASS_UP,)),
    ((TRYING, PROCEEDING), Ev.FINAL, COMPLETED, (Do.START_K, Do.PASS_UP)),
    *(((COMPLETED, TERMINATED), ev, STAY, ()) for ev in NON_INVITE_RESPONSES),
    ((TRYING, PROCEEDING), Ev.TIMER_E, STAY, (Do.RESEND_E,)),
    ((TRYING, PROCEEDING), Ev.TIMER_F, TERMINATED, (Do.TIME_OUT, Do.TERMINATE)),
    ((COMPLETED,), Ev.TIMER_K, TERMINATED, (Do.TERMINATE,)),
]

INVITE_TABLE = table(INVITE_ROWS)
NON_INVITE_TABLE = table(NON_INVITE_ROWS)
Table = dict[tuple[State, Ev], tuple[State, tuple[Do, ...]]]


def _check(
    name: str, built: Table, states: tuple[State, ...], responses: tuple[Ev, ...], timers: tuple[Timer, ...]
) -> None:
    missing = [(s, e) for e in responses for s in states if (s, e) not in built]
    assert not missing, f"{name}: responses that can come in any state lack rows: {missing}"
    for timer in timers:
        rows = {s for (s, e) in built if e is TIMER_EVENT[timer]}
        assert rows == TIMER_STATES[timer], f"{name}: Timer {timer} has rows in {rows}, runs in {TIMER_STATES[timer]}"
    stray = {st for (s, _e), (t, _a) in built.items() for st in (s, t) if st not in states}
    assert not stray, f"{name}: states of another kind: {stray}"


_check("INVITE", INVITE_TABLE, INVITE_STATES, INVITE_RESPONSES, INVITE_TIMERS)
_check("non-INVITE", NON_INVITE_TABLE, NON_INVITE_STATES, NON_INVITE_RESPONSES, NON_INVITE_TIMERS)


# -- what a transaction tells its TU ---------------------------------------------------------------


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


def classify(kind: Kind, status: int) -> Ev:
    """A response, named for the table of `kind`."""
    if status < 200:
        return Ev.PROVISIONAL
    if kind is Kind.NON_INVITE:
        return Ev.FINAL
    return Ev.SUCCESS if status < 300 else Ev.FAILURE


@dataclass(frozen=True, slots=True)
class Input:
    """What an action gets: the time, the event, and the response that caused it (if any)."""

    now: float
    event: Ev
    response: Response | None = None


_EVENT_TIMER = {event: timer for timer, event in TIMER_EVENT.items()}


class _ClientTransaction:
    """One client transaction: its request, the transport's reliability, its timers (deadlines), its state,
    driven through the table of its kind."""

    kind: ClassVar[Kind]
    TABLE: ClassVar[Table]
    FIRST: ClassVar[State]  # the state it starts in, the request sent
    RESEND: ClassVar[Timer]  # over UDP: resends the request from T1 on
    GIVE_UP: ClassVar[Timer]  # 64 x T1: no response, the transaction times out

    def __init__(self, request: Request, reliable: bool, now: float, t1: float = T1) -> None:
        self.request = request
        self.reliable = reliable
        self.state = self.FIRST
        self.t1 = t1
        self.due: dict[Timer, float] = {} if reliable else {self.RESEND: now + t1}
        self.due[self.GIVE_UP] = now + 64 * t1
        self._interval = t1  # the next retransmission interval (Timer A or E)
        self._ack: Request | None = None
        self.pending: list[Event] = [Transmit(request)]

    def get_timer(self) -> float | None:
        return min(self.due.values()) if self.due else None

    def events(self) -> list[Event]:
        out, self.pending = self.pending, []
        return out

    def receive(self, response: Response, now: float) -> list[Event]:
        self._dispatch(Input(now, classify(self.kind, response.status), response))
        return self.events()

    def handle_timer(self, now: float) -> list[Event]:
        """Fire what is due, earliest first (at the same instant B or F before A or E: no resend as the
        transaction gives up); a timer dropped or re-armed by an earlier one does not fire."""
        for timer, at in sorted(self.due.items(), key=lambda item: (item[1], item[0] in RESEND_TIMERS)):
            if at <= now and self.due.get(timer) == at:
                del self.due[timer]
                self._dispatch(Input(now, TIMER_EVENT[timer]))
        return self.events()

    def _dispatch(self, x: Input) -> None:
        illegal = partial(IllegalTransition, f"{self.kind} client transaction", self.state, x.event)
        self.state, actions = step(self.TABLE, self.state, x.event, self.due, TIMER_STATES, illegal)
        for action in actions:
            getattr(self, f"_{action.value}")(x)

    # -- the actions (Do.X runs _x) ----------------------------------------------------------------
    def _pass_up(self, x: Input) -> None:
        assert x.response is not None
        self.pending.append(ResponseReceived(x.response))

    def _pass_up_again(self, x: Input) -> None:
        assert x.response is not None
        self.pending.append(ResponseReceived(x.response, retransmission=True))

    def _send_ack(self, x: Input) -> None:
        assert x.response is not None
        self._ack = ack_for(self.request, x.response)
        self.pending.append(Transmit(self._ack))

    def _resend_ack(self, x: Input) -> None:
        assert self._ack is not None
        self.pending.append(Transmit(self._ack, retransmission=True))

    def _resend_a(self, x: Input) -> None:
        self.pending.append(Transmit(self.request, retransmission=True))
        self._interval *= 2
        self.due[Timer.A] = x.now + self._interval

    def _resend_e(self, x: Input) -> None:
        self.pending.append(Transmit(self.request, retransmission=True))
        self._interval = T2 if self.state is State.PROCEEDING else min(self._interval * 2, T2)
        self.due[Timer.E] = x.now + self._interval

    def _start_d(self, x: Input) -> None:
        self.due[Timer.D] = x.now + (0.0 if self.reliable else TIMER_D_UDP)

    def _start_m(self, x: Input) -> None:
        self.due[Timer.M] = x.now + 64 * self.t1

    def _start_k(self, x: Input) -> None:
        self.due[Timer.K] = x.now + (0.0 if self.reliable else T4)

    def _time_out(self, x: Input) -> None:
        self.pending.append(TimedOut(_EVENT_TIMER[x.event].value))

    def _terminate(self, x: Input) -> None:
        self.pending.append(Terminated())


class InviteClientTransaction(_ClientTransaction):
    kind, TABLE, FIRST, RESEND, GIVE_UP = Kind.INVITE, INVITE_TABLE, State.CALLING, Timer.A, Timer.B

    @property
    def provisional_seen(self) -> bool:
        """A CANCEL may be sent only once a provisional response arrived (RFC 3261 §9.1)."""
        return self.state is State.PROCEEDING


class NonInviteClientTransaction(_ClientTransaction):
    kind, TABLE, FIRST, RESEND, GIVE_UP = Kind.NON_INVITE, NON_INVITE_TABLE, State.TRYING, Timer.E, Timer.F
