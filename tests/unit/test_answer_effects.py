"""What an answered call does is decided by the tables (issue 23): the prompt, the transfer and the hang-up
are effects of rows, carried out by the channel after the commit and reported back as `prompt_done` and
`transfer_done`. Pure decide() with a fake clock, then the engine handing the committed effect to the port."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain import effects as fx
from gateway.domain.decide import Decision, decide
from gateway.domain.policy import Policy
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState, Mode
from gateway.domain.statuses import STATUSES, Channel, Status
from gateway.domain.tables import CALL_UP_ROWS, AfterPrompt, AfterTransfer
from gateway.engine.engine import Engine, Unit

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
S = Status
K = Kind
AGENTS = "sip:agents@queue.example"
PROMPT_DONE = Signal(K.PROMPT_DONE, {"source": "sip", "kind": "prompt_done"}, attempt=1)
TRANSFER_OK = Signal(K.TRANSFER_DONE, {"kind": "transfer_done", "ok": True, "sip_code": 200, "reason": "OK"}, attempt=1)
TRANSFER_FAILED = Signal(
    K.TRANSFER_DONE, {"kind": "transfer_done", "ok": False, "sip_code": 603, "reason": "Decline"}, attempt=1
)
HANGUP = Signal(K.HANGUP, {"source": "sip", "kind": "hangup", "duration_s": 4.0}, attempt=1, duration_s=4.0)
BY_MODE = [(Mode.PROGRESSIVE, S.CALL_IN_PROGRESS), (Mode.PREDICTIVE, S.AWAITING_OPERATOR)]
CLIENT_HANGUP = Signal(K.CLIENT_HANGUP, {"source": "sip", "kind": "client_hangup"}, attempt=1, duration_s=4.0)


class Clock:
    """A fake clock: each decision one second after the last."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def calling(mode: Mode = Mode.PROGRESSIVE, **kw: object) -> tuple[ContactState, Clock]:
    """A contact whose first call is ringing."""
    clock = Clock()
    state = ContactState(campaign_id="c", contact_id="k", channel=Channel.VOICE, mode=mode, **kw)  # type: ignore[arg-type]
    state = decide(state, Signal(K.CREATE, phone="+420601234567"), clock()).state
    state = decide(state, Signal(K.DIAL_DUE), clock()).state
    assert state.status is S.CALLING and state.attempt == 1
    return state, clock


def answer(state: ContactState, clock: Clock) -> Decision:
    return decide(state, Signal(K.ANSWERED, {"kind": "answered"}, attempt=1), clock())


def channel_effects(d: Decision) -> list[fx.Effect]:
    return [e for e in d.effects if isinstance(e, fx.PlayPrompt | fx.Transfer | fx.HangUp)]


@pytest.mark.parametrize(
    ("mode", "status"), [(Mode.PROGRESSIVE, S.CALL_IN_PROGRESS), (Mode.PREDICTIVE, S.AWAITING_OPERATOR)]
)
def test_answer_with_a_prompt_plays_it_and_nothing_else(mode: Mode, status: Status) -> None:
    state, clock = calling(mode, prompt="notice.wav", connect_to=AGENTS)
    d = answer(state, clock)
    assert [e.status for e in d.events] == [status]
    assert d.effects == (fx.PlayPrompt("notice.wav"),), "the prompt first; the transfer waits for prompt_done"


@pytest.mark.parametrize(
    ("mode", "status"), [(Mode.PROGRESSIVE, S.CALL_IN_PROGRESS), (Mode.PREDICTIVE, S.AWAITING_OPERATOR)]
)
def test_answer_with_connect_to_transfers(mode: Mode, status: Status) -> None:
    state, clock = calling(mode, connect_to=AGENTS)
    d = answer(state, clock)
    assert [e.status for e in d.events] == [status]
    assert d.effects == (fx.Transfer(AGENTS),)


def test_answer_without_a_target_keeps_the_call() -> None:
    state, clock = calling()  # `sip.connect_to` is applied at intake: a contact without one has none
    d = answer(state, clock)
    assert [e.status for e in d.events] == [S.CALL_IN_PROGRESS] and d.effects == (), "nothing asked: the call stays"


def test_prompt_done_transfers_when_there_is_a_target_else_hangs_up() -> None:
    for kw, expected in (({"connect_to": AGENTS}, fx.Transfer(AGENTS)), ({}, fx.HangUp())):
        state, clock = calling(prompt="notice.wav", **kw)
        state = answer(state, clock).state
        d = decide(state, PROMPT_DONE, clock())
        assert d.effects == (expected,)
        assert d.events == () and d.state == state, "no status change, nothing published, nothing written"
        assert not (d.illegal or d.absorbed or d.refused)


def test_transfer_done_hangs_up_and_the_outcome_is_the_hangups_evidence() -> None:
    state, clock = calling(connect_to=AGENTS)
    state = answer(state, clock).state
    d = decide(state, TRANSFER_OK, clock())
    assert d.effects == (fx.HangUp(),) and d.events == ()
    assert d.state.transfer == "ok" and d.state.status is S.CALL_IN_PROGRESS
    end = decide(d.state, HANGUP, clock())
    assert [e.status for e in end.events] == [S.SUCCESS]
    assert end.events[0].evidence["transfer"] == "ok" and end.events[0].evidence["kind"] == "hangup"


def test_predictive_transfer_connects_then_the_gateway_leaves() -> None:
    """test_voice's transfer, decided: answered → awaiting_operator + REFER; the NOTIFY's 200 is `connected`
    (call_in_progress) and `transfer_done` (BYE); the BYE's end is success with `transfer: ok`."""
    state, clock = calling(Mode.PREDICTIVE, connect_to=AGENTS)
    seen: list[Decision] = []
    for signal in (
        Signal(K.ANSWERED, attempt=1),
        Signal(K.CONNECTED, {"kind": "connected", "sip_code": 200}, attempt=1),
        TRANSFER_OK,
        HANGUP,
    ):
        d = decide(state, signal, clock())
        seen.append(d)
        state = d.state
    assert [e.status for d in seen for e in d.events] == [S.AWAITING_OPERATOR, S.CALL_IN_PROGRESS, S.SUCCESS]
    assert [channel_effects(d) for d in seen] == [[fx.Transfer(AGENTS)], [], [fx.HangUp()], []]
    assert seen[-1].events[0].evidence["transfer"] == "ok"


def test_a_failed_transfer_still_hangs_up_and_says_why() -> None:
    state, clock = calling(Mode.PREDICTIVE, connect_to=AGENTS)
    state = answer(state, clock).state
    d = decide(state, TRANSFER_FAILED, clock())
    assert d.effects == (fx.HangUp(),) and d.state.transfer == "failed: 603 Decline"
    end = decide(d.state, HANGUP, clock())
    assert [e.status for e in end.events] == [S.CANCELED_BY_CLIENT]  # as before: no operator took it
    assert end.events[0].evidence["transfer"] == "failed: 603 Decline"


def test_a_refused_transfer_has_no_code() -> None:
    state, clock = calling(connect_to=AGENTS)
    state = answer(state, clock).state
    refused = Signal(K.TRANSFER_DONE, {"ok": False, "sip_code": None, "reason": "refused: bad uri"}, attempt=1)
    assert decide(state, refused, clock()).state.transfer == "failed:  refused: bad uri"  # as the channel wrote it


def test_the_client_hanging_up_after_the_transfer_carries_its_outcome() -> None:
    state, clock = calling(connect_to=AGENTS)
    state = decide(answer(state, clock).state, TRANSFER_OK, clock()).state
    end = decide(state, CLIENT_HANGUP, clock())
    assert [e.status for e in end.events] == [S.SUCCESS] and end.events[0].evidence["transfer"] == "ok"


def test_an_attempt_starts_with_no_transfer_outcome() -> None:
    clock = Clock()
    state = ContactState(
        campaign_id="c",
        contact_id="k",
        channel=Channel.VOICE,
        policy=Policy(max_attempts=3, retry_on=("unreachable",)),
        connect_to=AGENTS,
    )
    state = decide(state, Signal(K.CREATE, phone="+420601234567"), clock()).state
    state = decide(state, Signal(K.DIAL_DUE), clock()).state
    state = state.model_copy(update={"transfer": "failed: 486 Busy"})  # left over from the last call
    state = decide(state, Signal(K.UNREACHABLE, attempt=1), clock()).state
    assert state.status is S.RETRY_SCHEDULED
    state = decide(state, Signal(K.DIAL_DUE), clock()).state
    assert state.attempt == 2 and state.transfer is None


@pytest.mark.parametrize("report", [PROMPT_DONE, TRANSFER_OK])
def test_reports_after_the_call_ended_are_stale(report: Signal) -> None:
    """The call ended while its prompt played or its transfer ran: the report is absorbed, no effect."""
    for mode, wrapup, end in (
        (Mode.PROGRESSIVE, False, HANGUP),
        (Mode.PROGRESSIVE, True, HANGUP),  # acw
        (Mode.PREDICTIVE, False, CLIENT_HANGUP),  # canceled_by_client
    ):
        state, clock = calling(mode, prompt="notice.wav", connect_to=AGENTS, wrapup=wrapup)
        state = decide(decide(state, Signal(K.ANSWERED, attempt=1), clock()).state, end, clock()).state
        d = decide(state, report, clock())
        assert d.absorbed == "stale" and d.effects == () and d.events == () and d.state == state, state.status


@pytest.mark.parametrize("report", [PROMPT_DONE, TRANSFER_OK])
def test_reports_of_another_attempt_or_of_a_call_not_answered_are_stale(report: Signal) -> None:
    state, clock = calling(connect_to=AGENTS)
    assert decide(state, report, clock()).absorbed == "stale", "still ringing: no answered call to report on"
    state = answer(state, clock).state
    other = Signal(report.kind, report.evidence, attempt=2)
    assert decide(state, other, clock()).absorbed == "stale"


@pytest.mark.parametrize("kind", [K.PROMPT_DONE, K.TRANSFER_DONE])
def test_every_voice_status_without_a_call_up_absorbs_the_reports(kind: Kind) -> None:
    """Legal wherever they can arrive: with no call up (in_flight and answered), every voice status absorbs them."""
    for status in STATUSES[Channel.VOICE]:
        for in_flight, answered in ((False, False), (False, True), (True, False)):
            state = ContactState(
                campaign_id="c",
                contact_id="k",
                channel=Channel.VOICE,
                status=status,
                sequence=3,
                attempt=1,
                in_flight=in_flight,
                answered=answered,
            )
            d = decide(state, Signal(kind, attempt=1), T0)
            assert d.absorbed == "stale" and not d.illegal and d.effects == (), (status, in_flight, answered)


def test_every_row_of_a_call_that_is_up_carries_out_the_reports() -> None:
    for row in CALL_UP_ROWS:
        assert isinstance(row[K.PROMPT_DONE], AfterPrompt) and isinstance(row[K.TRANSFER_DONE], AfterTransfer)


class Port:
    """A voice channel that records what it is asked to carry out, with the contact as committed."""

    channel = Channel.VOICE
    max_concurrent = 10
    max_rate = 10.0

    def __init__(self) -> None:
        self.done: list[tuple[fx.Effect, ContactState]] = []

    def active(self, campaign_id: str | None = None) -> int:
        return 0

    def active_counts(self) -> dict[str, int]:
        return {}

    def submit(self, effect: fx.Effect, contact: ContactState) -> None:
        self.done.append((effect, contact))

    async def run(self) -> None:
        await asyncio.Event().wait()


async def test_the_engine_hands_the_answers_effects_to_the_channel_after_the_commit(engine: Engine) -> None:
    port = Port()
    engine.ports[Channel.VOICE] = port
    key = ("c", "k")

    def create(unit: Unit) -> None:
        state = ContactState(
            campaign_id="c", contact_id="k", channel=Channel.VOICE, prompt="notice.wav", connect_to=AGENTS
        )
        unit.apply(key, Signal(K.CREATE, phone="+420601234567"), create=state)
        unit.apply(key, Signal(K.DIAL_DUE))

    await engine.execute(create)
    await engine.signal(key, Signal(K.ANSWERED, attempt=1))
    effect, committed = port.done[-1]
    assert effect == fx.PlayPrompt("notice.wav") and committed.status is S.CALL_IN_PROGRESS
    await engine.signal(key, Signal(K.PROMPT_DONE, attempt=1))
    await engine.signal(key, TRANSFER_FAILED)
    assert [e for e, _ in port.done] == [fx.Dial(1), fx.PlayPrompt("notice.wav"), fx.Transfer(AGENTS), fx.HangUp()]
    stored = await engine.execute(lambda unit: unit.read.get_contact(key))
    assert stored is not None and stored.transfer == "failed: 603 Decline", "kept in the store for the hangup"


async def test_sip_connect_to_is_applied_at_intake_to_a_dial_that_names_none(engine: Engine) -> None:
    from gateway.contract.wire import parse_command
    from gateway.domain.policy import Policy
    from gateway.engine.commands import CommandContext, execute

    ctx = CommandContext("CZ", Policy(), frozenset({Channel.VOICE}), ring_timeout_s=30, connect_to=AGENTS)
    for cid, extra in (("plain", {}), ("own", {"connect_to": "sip:own@pbx.example"})):
        payload = {"command_id": cid, "campaign_id": "c", "contact_id": cid, "phone": "+420601234567", **extra}
        cmd = parse_command("dial", json.dumps(payload).encode())
        await engine.execute(lambda unit, cmd=cmd: execute(unit, cmd, ctx, "gw", None, None))
    plain = await engine.execute(lambda unit: unit.read.get_contact(("c", "plain")))
    own = await engine.execute(lambda unit: unit.read.get_contact(("c", "own")))
    assert plain is not None and plain.connect_to == AGENTS
    assert own is not None and own.connect_to == "sip:own@pbx.example"
