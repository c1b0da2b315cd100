"""Lawful calling end to end (issue 25, docs/lawful-calling.md), with the PBX simulator as the far end and
the wire ledger: no INVITE outside the callee's window, none beyond a number's cap, none within 72 h of an
abandoned call; a predictive call nobody takes is abandoned after abandon_after_s with our BYE; the
campaign pauses at its abandonment limit; on PostgreSQL with two instances each number is dialled once.

The far end (`Peer`) is sip/pbxsim.py's simulator with an outcome per number (the number's last digit) and
a hang-up of its own only when asked: a predictive call it answers stays up until the gateway hangs up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.service.app import App
from sip.message import Request, parse
from sip.pbxsim import PbxSimulator, _SimCall
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, gateway, settings_for
from tests.support.postgres import Postgres
from tests.support.settle import settled

pytestmark = pytest.mark.integration
PRAGUE = ZoneInfo("Europe/Prague")  # the zone of every +420 number (phonenumbers)
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# the number's last digit picks the outcome at the far end
OUTCOMES = {"0": "answer", "1": "answer", "2": "answer", "3": "busy", "4": "decline"}
_names = itertools.count()


class Peer(PbxSimulator):
    """The far end: answers (0-2), is busy (3) or declines with 603 (4) after a short ring; an answered
    call is hung up by the peer after `hang_up_s` (None: never — the gateway must). Records, per number,
    the BYEs it received for calls it had answered."""

    def __init__(self, hang_up_s: float | None = None) -> None:
        super().__init__(speed=5.0, seed=25)
        self.hang_up_s = hang_up_s
        self.byes: Counter[str] = Counter()
        self._user = ""

    def digits(self) -> Counter[str]:
        """INVITEs per number digits, as the ledger keys them."""
        return Counter({ledger.digits(user): n for user, n in self.invites_by_number().items()})

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(Exception):
            message = parse(data)
            if isinstance(message, Request) and message.method == "BYE":
                call = self.calls.get(message.headers.get("call-id") or "")
                if call is not None and call.answered:
                    self.byes[ledger.digits(self.invited[message.headers.get("call-id") or ""])] += 1
        super().datagram_received(data, addr)

    def _invite(self, invite: Request, addr: tuple[str, int], call_id: str) -> None:
        self._user = invite.uri.partition(":")[2].partition("@")[0]
        known = call_id in self.calls
        super()._invite(invite, addr, call_id)
        call = self.calls.get(call_id)
        if not known and call is not None and call.outcome == "decline":  # the simulator has no decline
            self._later(call, 0.5, lambda: self._final(call, 603, "Decline", 21))

    def draw(self) -> str:
        return OUTCOMES.get(self._user[-1:], "answer")

    def _answer(self, call: _SimCall) -> None:
        super()._answer(call)
        if call.handles:  # the simulator's own hang-up, replaced by ours
            call.handles.pop().cancel()
        if self.hang_up_s is not None and call.answered:
            call.handles.append(asyncio.get_running_loop().call_later(self.hang_up_s, self._hang_up, call))


@contextlib.asynccontextmanager
async def peer(hang_up_s: float | None = None) -> AsyncIterator[Peer]:
    loop = asyncio.get_running_loop()
    transport, sim = await loop.create_datagram_endpoint(lambda: Peer(hang_up_s), local_addr=("127.0.0.1", 0))
    try:
        yield sim
    finally:
        transport.close()


def settings(broker: Mosquitto, tmp_path: Path, pbx: Peer, **sections: Any) -> Any:
    sip = {"pbx": pbx.address, "local": "127.0.0.1:0", "ring_timeout_s": 20, **sections.pop("sip", {})}
    return settings_for(broker.url, tmp_path, sip=sip, **sections)


async def campaign(b: Backend, campaign_id: str, **fields: Any) -> None:
    command_id = f"camp-{campaign_id}-{next(_names)}"
    await b.send("campaign", {"command_id": command_id, "campaign_id": campaign_id, "action": "start", **fields})
    await b.wait_for(lambda: b.result(command_id) is not None)
    result = b.result(command_id)
    assert result is not None and result["accepted"], result


async def dial(b: Backend, campaign_id: str, contact_id: str, phone: str, **fields: Any) -> None:
    payload = {"command_id": f"d-{campaign_id}-{contact_id}", "campaign_id": campaign_id, "contact_id": contact_id}
    await b.send("dial", {**payload, "phone": phone, "policy": {"max_attempts": 1}, **fields})


def last(b: Backend, campaign_id: str, contact_id: str) -> dict[str, Any]:
    events = b.unique(campaign_id, contact_id)
    return events[-1] if events else {}


def at(event: dict[str, Any], field: str = "occurred_at") -> datetime:
    return datetime.fromisoformat(event[field])


def closed_today(now: datetime) -> tuple[dict[str, Any], datetime]:
    """A weekly window that is closed at `now` in Prague (open only three days from now, 10:00-11:00 local),
    and the instant it opens."""
    local = now.astimezone(PRAGUE).date()
    day = local + timedelta(days=3)
    opens = datetime.combine(day, time(10, 0), PRAGUE).astimezone(UTC)
    return {"weekly": {DAYS[day.weekday()]: ["10:00-11:00"]}, "margin_s": 0}, opens


ALWAYS = {"weekly": {d: ["00:00-24:00"] for d in DAYS}, "margin_s": 0, "default_tz": "Europe/Prague"}


@pytest.mark.both_stores
async def test_no_invite_outside_the_callees_window_and_one_inside_it(broker: Mosquitto, tmp_path: Path) -> None:
    async with (
        peer(hang_up_s=0.5) as pbx,
        backend(broker.url) as b,
        gateway(settings(broker, tmp_path, pbx), channels=()) as app,
    ):
        window, opens = closed_today(datetime.now(UTC))
        await campaign(b, "closed", window=window)
        await campaign(b, "open", window=ALWAYS)
        for i in range(3):
            await dial(b, "closed", f"k{i}", f"+42060150000{i}")
        await dial(b, "open", "k", "+420601500010")
        await b.wait_for(lambda: all(b.statuses("closed", f"k{i}")[-1:] == ["retry_scheduled"] for i in range(3)))
        await b.wait_for(lambda: b.final("open", "k"), timeout=20)
        for i in range(3):
            held = last(b, "closed", f"k{i}")
            assert held["attempt"] == 0 and held["signal"]["kind"] == "outside_window", held
            assert at(held, "retry_at") == opens, (held["retry_at"], opens)
        assert [e["status"] for e in b.unique("open", "k")] == ["initial", "calling", "call_in_progress", "success"]
        await settled(b, app)
        seen = await ledger.check(b, "voice", pbx.digits)
        assert seen.compared == 4 and seen.attempts == 1 and pbx.digits() == Counter({"420601500010": 1})
        # the held rows wait in the store's queue for the opening (no task, no timer)
        rows = await app.store.read(lambda t: [t.get_contact(("closed", f"k{i}")) for i in range(3)])
        assert all(r is not None and r.retry_at == opens for r in rows)
        assert (
            app.recorder.registry.get_sample_value(
                "telgate_dials_held_total", {"campaign": "closed", "reason": "outside_window"}
            )
            == 3
        )
    # a restart does not dial them either: the same store, a new process
    async with (
        peer() as pbx2,
        backend(broker.url) as b2,
        gateway(settings(broker, tmp_path, pbx2), channels=()) as again,
    ):
        await campaign(b2, "closed", action="resume")
        await settled(b2, again)
        assert pbx2.digits() == Counter()


@pytest.mark.both_stores
async def test_no_invite_beyond_a_numbers_cap_over_every_campaign(broker: Mosquitto, tmp_path: Path) -> None:
    """max_attempts 1 per 30 days: the number a first campaign called (busy) is held in a second; a
    number that declined (603) is held for after_refusal_days; another number is called."""
    once = {"max_attempts": 1, "per_days": 30, "after_refusal_days": 60}
    async with peer() as pbx, backend(broker.url) as b, gateway(settings(broker, tmp_path, pbx), channels=()) as app:
        await campaign(b, "first", limits=once)
        await campaign(b, "second", limits={"after_refusal_days": 60})
        await dial(b, "first", "busy", "+420601600003")
        await dial(b, "first", "declines", "+420601600014")
        await b.wait_for(lambda: b.final("first", "busy") and b.final("first", "declines"), timeout=20)
        await dial(b, "first", "again", "+420601600003")  # the same campaign: the cap holds too
        await dial(b, "second", "busy", "+420601600003")
        await dial(b, "second", "declines", "+420601600014")
        await dial(b, "second", "other", "+420601600023")
        await b.wait_for(lambda: b.final("second", "other"), timeout=20)
        for key in (("first", "again"), ("second", "declines")):
            await b.wait_for(lambda key=key: b.statuses(*key)[-1:] == ["retry_scheduled"])
        busy_at = at(next(e for e in b.unique("first", "busy") if e["status"] == "calling"))
        refused_at = at(last(b, "first", "declines"))
        again = last(b, "first", "again")
        assert again["signal"]["kind"] == "max_attempts" and again["attempt"] == 0
        assert abs(at(again, "retry_at") - (busy_at + timedelta(days=30))) < timedelta(seconds=1)
        declined = last(b, "second", "declines")
        assert declined["signal"]["kind"] == "after_refusal"
        assert abs(at(declined, "retry_at") - (refused_at + timedelta(days=60))) < timedelta(seconds=1)
        # the second campaign has no max_attempts: the busy number is called again there
        await b.wait_for(lambda: b.final("second", "busy"), timeout=20)
        await settled(b, app)
        seen = await ledger.check(b, "voice", pbx.digits)
        assert pbx.digits() == Counter({"420601600003": 2, "420601600014": 1, "420601600023": 1})
        assert seen.attempts == 4


@pytest.mark.both_stores
async def test_an_abandoned_call_is_hung_up_within_2_s_and_its_number_is_not_called_for_72_h(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with peer() as pbx, backend(broker.url) as b, gateway(settings(broker, tmp_path, pbx), channels=()) as app:
        await campaign(b, "pred", operators=1)
        await campaign(b, "later", limits={})  # limits' defaults: none within 72 h of an abandoned call
        await dial(b, "pred", "k", "+420601700000", mode="predictive")
        await b.wait_for(lambda: b.final("pred", "k"), timeout=20)
        events = b.unique("pred", "k")
        assert [e["status"] for e in events] == ["initial", "calling", "awaiting_operator", "abandoned"]
        waited = at(events[3]) - at(events[2])
        # the message starts within abandon_after_s (2 s) of the answer: the timer fires 0.2 s before it
        assert timedelta(seconds=1.8) <= waited < timedelta(seconds=2.0), waited
        await b.wait_for(lambda: pbx.byes["420601700000"] == 1), "the peer got our BYE"
        await dial(b, "later", "k", "+420601700000")
        await b.wait_for(lambda: b.statuses("later", "k")[-1:] == ["retry_scheduled"])
        held = last(b, "later", "k")
        assert held["signal"]["kind"] == "after_abandon"
        assert abs(at(held, "retry_at") - (at(events[3]) + timedelta(hours=72))) < timedelta(seconds=1)
        await settled(b, app)
        assert (await ledger.check(b, "voice", pbx.digits)).attempts == 1
        assert pbx.digits() == Counter({"420601700000": 1})
        r = app.recorder.registry
        assert r.get_sample_value("telgate_calls_abandoned_total", {"campaign": "pred"}) == 1
        assert r.get_sample_value("telgate_campaign_abandon_rate", {"campaign": "pred"}) == 1.0
        assert r.get_sample_value("telgate_dials_held_total", {"campaign": "later", "reason": "after_abandon"}) == 1


@pytest.mark.both_stores
async def test_the_campaign_pauses_at_its_abandonment_limit(broker: Mosquitto, tmp_path: Path) -> None:
    """max_abandon_rate 3 % with a minimum sample of 50 live answers: 1.5 abandons are allowed, the second
    pauses the campaign (abandon_rate); one operator, so the pacer places one call at a time, and what is
    left is not dialled while the campaign is paused."""
    async with peer() as pbx, backend(broker.url) as b, gateway(settings(broker, tmp_path, pbx), channels=()) as app:
        await campaign(b, "pace", operators=1, max_abandon_rate=0.03, abandon_min_answers=50)
        for i in range(4):
            await dial(b, "pace", f"k{i}", f"+4206018000{i}0", mode="predictive")
        await b.wait_for(lambda: any(c["status"] == "paused" for c in b.campaigns), timeout=30)
        paused = next(c for c in b.campaigns if c["status"] == "paused")
        assert paused["reason"].startswith("abandon_rate: 2 of 2"), paused
        abandoned = [k for k in ("k0", "k1", "k2", "k3") if b.statuses("pace", k)[-1:] == ["abandoned"]]
        assert abandoned == ["k0", "k1"]
        await settled(b, app, idle=lambda: app.voice is not None and app.voice.active() == 0)
        assert b.statuses("pace", "k2") == ["initial"] and b.statuses("pace", "k3") == ["initial"]
        assert sum(pbx.digits().values()) == 2 and sum(pbx.byes.values()) == 2
        assert (await ledger.check(b, "voice", pbx.digits)).attempts == 2
        assert (
            app.recorder.registry.get_sample_value("telgate_campaign_auto_pauses_total", {"cause": "abandon_rate"}) == 1
        )


async def test_two_instances_on_postgresql_dial_each_number_once_and_keep_the_window(
    broker: Mosquitto, session_postgres: Postgres, tmp_path: Path
) -> None:
    """Two instances share one PostgreSQL and one broker; the dial commands are spread over them by the
    shared subscription. Two campaigns with max_attempts 1 name the same 20 numbers: each number gets
    one INVITE, the other contact is held; a campaign whose window is closed gets none."""
    url = await asyncio.to_thread(session_postgres.create_database, f"lawful{next(_names)}")
    once = {"max_attempts": 1, "per_days": 30}
    window, opens = closed_today(datetime.now(UTC))
    async with peer() as pbx, backend(broker.url) as b, contextlib.AsyncExitStack() as stack:
        apps: list[App] = []
        for n in (1, 2):
            section = {
                "gateway": {"id": f"gw{n}", "lease_s": 2.0},
                "store": {"url": url},
                "bus": {"client_id": f"telgate-lawful-gw{n}"},
            }
            apps.append(
                await stack.enter_async_context(
                    gateway(settings(broker, tmp_path / f"gw{n}", pbx, **section), channels=())
                )
            )
        await b.wait_for(lambda: all(a.cluster.size == 2 for a in apps), timeout=20)
        await campaign(b, "a", limits=once)
        await campaign(b, "b", limits=once)
        await campaign(b, "night", window=window)
        numbers = [f"+42060190{i:03d}3" for i in range(20)]  # busy: every call ends at once
        for i, phone in enumerate(numbers):
            await dial(b, "a", f"k{i}", phone)
            await dial(b, "b", f"k{i}", phone)
            await dial(b, "night", f"k{i}", f"+42060190{i:03d}0")
        keys = [(c, f"k{i}") for c in ("a", "b", "night") for i in range(20)]

        def decided(key: tuple[str, str]) -> bool:
            return b.final(*key) or b.statuses(*key)[-1:] == ["retry_scheduled"]

        await b.wait_for(lambda: all(decided(k) for k in keys), timeout=60)
        await settled(b, apps[0])
        await settled(b, apps[1])
        assert pbx.digits() == Counter({ledger.digits(p): 1 for p in numbers}), "each number dialled once"
        seen = await ledger.check(b, "voice", pbx.digits)
        assert seen.attempts == 20 and seen.compared == 60
        for i in range(20):
            finals = sorted(last(b, c, f"k{i}")["status"] for c in ("a", "b"))
            assert finals == ["completed_without_answer", "retry_scheduled"], (i, finals)
            night = last(b, "night", f"k{i}")
            assert night["signal"]["kind"] == "outside_window" and at(night, "retry_at") == opens
        held = {e["gateway_id"] for e in b.events if e["status"] == "retry_scheduled"}
        placed = {e["gateway_id"] for e in b.events if e["status"] == "calling"}
        assert held | placed <= {"gw1", "gw2"}  # (both instances placed and held some in every run here)
