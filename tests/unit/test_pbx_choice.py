"""Several PBXs: which one a new call goes to (the voice channel's choice, no sockets needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gateway.channels.voice import VoiceChannel
from gateway.config import load_settings
from gateway.contract.topics import Topics
from gateway.engine.engine import Engine, Unit
from gateway.store.sqlite import SqliteStore
from metrics.recorder import Recorder


def channel(tmp_path: Path, pbx: object) -> VoiceChannel:
    sip = load_settings(None, sip={"pbx": pbx, "local": "127.0.0.1:0"}).sip
    recorder = Recorder("test")
    return VoiceChannel(Engine(SqliteStore(tmp_path / "t.db"), "gw", Topics("telgate"), recorder), recorder, sip)


def test_lowest_priority_up_first_ties_in_turn_all_down_still_somewhere(tmp_path: Path) -> None:
    voice = channel(
        tmp_path,
        [
            {"address": "10.0.0.3:5060", "priority": 2},
            {"address": "10.0.0.1:5060", "priority": 1},
            {"address": "10.0.0.2:5060", "priority": 1},
        ],
    )
    a, b, c = (next(p for p in voice.pbxs if p.address == f"10.0.0.{i}:5060") for i in (1, 2, 3))
    assert Counter(voice.choose().address for _ in range(10)) == {a.address: 5, b.address: 5}  # ties: in turn
    down = "tls: certificate verify failed"  # down at once: the health core's verdict (sip/health.py)
    voice.health.transport_failed(a.address, 0.0, down, certificate=True)
    assert a.state == "down" and a.why == down and {voice.choose().address for _ in range(4)} == {b.address}
    voice.health.transport_failed(b.address, 0.0, down, certificate=True)
    assert {voice.choose().address for _ in range(4)} == {c.address} and voice.state == "up"
    voice.health.transport_failed(c.address, 0.0, down, certificate=True)
    # none answers: calls still go to the best (and Timer B or 5 failures tell)
    assert voice.state == "down" and {voice.choose().address for _ in range(4)} == {a.address, b.address}
    assert voice.recorder.registry.get_sample_value("telgate_pbx_up", {"pbx": "10.0.0.3:5060"}) == 1


def test_a_plain_string_is_one_pbx_as_before(tmp_path: Path) -> None:
    voice = channel(tmp_path, "10.0.0.9:5070")
    assert [(p.address, p.addr, p.priority) for p in voice.pbxs] == [("10.0.0.9:5070", ("10.0.0.9", 5070), 1)]
    assert voice.ua.pbx == ("10.0.0.9", 5070) and voice.ua.cfg.pbx == "10.0.0.9:5070"
    assert [str(n) for n in voice.allowed] == ["10.0.0.9/32"]


async def test_five_failed_dials_take_one_pbx_out_and_only_all_of_them_pause(tmp_path: Path) -> None:
    import asyncio

    from gateway.domain import effects as fx
    from gateway.domain.policy import Policy
    from gateway.domain.signals import Kind, Signal
    from gateway.domain.state import ContactState
    from gateway.domain.statuses import Channel
    from sip.call import Ended, EndKind
    from sip.ua import CallUpdate

    sip = load_settings(None, sip={"pbx": ["10.0.0.1:5060", "10.0.0.2:5060"], "local": "127.0.0.1:0"}).sip
    recorder = Recorder("test")
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    engine = Engine(store, "gw", Topics("telgate"), recorder)
    task = asyncio.create_task(engine.run())
    try:
        voice = VoiceChannel(engine, recorder, sip)  # no socket: what it sends waits in its queue
        contact = ContactState(
            campaign_id="c",
            contact_id="k",
            channel=Channel.VOICE,
            phone="+420601234567",
            policy=Policy(ring_timeout_s=30),  # as every dial's policy has it from intake
        )

        def create(unit: Unit) -> object:
            unit.campaign("c")
            return unit.apply(("c", "k"), Signal(Kind.CREATE, phone=contact.phone), create=contact)

        await engine.execute(create)

        def fail_one() -> str:
            voice.submit(fx.Dial(1), contact)
            call_id = next(reversed(voice._calls))
            address = voice._calls[call_id].pbx.address
            voice._on_update(CallUpdate(call_id, Ended(EndKind.FAILED, 503, "Service Unavailable")))
            return address

        assert [fail_one() for _ in range(5)] == ["10.0.0.1:5060"] * 5
        assert recorder.registry.get_sample_value("telgate_pbx_up", {"pbx": "10.0.0.1:5060"}) == 0
        assert voice.state == "up"
        await engine.execute(lambda unit: None)  # what was submitted before is committed by now
        camp = await store.run(lambda t: t.get_campaign("c"))
        assert camp is not None and camp.status == "in_progress"  # one PBX is left: no pause
        assert [fail_one() for _ in range(5)] == ["10.0.0.2:5060"] * 5  # the next calls went to the second
        assert voice.state == "down"
        async with asyncio.timeout(10):  # the pause is committed by the engine
            while (camp := await store.run(lambda t: t.get_campaign("c"))) is None or camp.status != "paused":
                await asyncio.sleep(0.01)
        assert camp.reason is not None and camp.reason.startswith("pbx_down: all 2 PBXs down, the last 10.0.0.2:5060")
    finally:
        task.cancel()
        await store.close()


def _stream_channel(tmp_path: Path, pbx: object, transport: str) -> VoiceChannel:
    sip = load_settings(None, sip={"pbx": pbx, "local": "127.0.0.1:0", "transport": transport}).sip
    recorder = Recorder("test")
    return VoiceChannel(Engine(SqliteStore(tmp_path / "t.db"), "gw", Topics("telgate"), recorder), recorder, sip)


async def test_a_connection_that_cannot_be_made_takes_that_pbx_out_when_there_are_others(tmp_path: Path) -> None:
    from sip.transport import LinkFailed

    two = _stream_channel(tmp_path, ["10.0.0.1:5060", "10.0.0.2:5060"], "tcp")
    two._on_update(LinkFailed("tcp", "Connection refused", pbx=("10.0.0.2", 5060)))
    assert [p.state for p in two.pbxs] == ["up", "down"] and two.pbxs[
        1
    ].why == "tcp connection failed: Connection refused"
    assert two.state == "up" and {two.choose().address for _ in range(3)} == {"10.0.0.1:5060"}
    # with one PBX a refused connection is each attempt's `failed` (down after 5 of them, not at once)
    one = _stream_channel(tmp_path, "10.0.0.1:5060", "tcp")
    one._on_update(LinkFailed("tcp", "Connection refused", pbx=("10.0.0.1", 5060)))
    assert one.state == "up"
    # a certificate is down at once, one PBX or several, and names which PBX
    tls = _stream_channel(tmp_path, ["10.0.0.1", {"address": "10.0.0.2", "tls_server_name": "pbx2.example"}], "tls")
    assert [(p.addr, p.tls_server_name) for p in tls.pbxs] == [
        (("10.0.0.1", 5061), None),
        (("10.0.0.2", 5061), "pbx2.example"),
    ]
    tls._on_update(
        LinkFailed("tls", "tls: x", "certificate verify failed: certificate has expired", ("10.0.0.1", 5061))
    )
    assert [p.state for p in tls.pbxs] == ["down", "up"] and tls.pbxs[
        0
    ].why == "tls: certificate verify failed: certificate has expired"


def test_a_dropped_connection_is_reopened_at_once_by_an_options_to_that_pbx(tmp_path: Path) -> None:
    import asyncio

    from sip.message import Request, parse
    from sip.transport import LinkLost
    from sip.ua import Datagram

    async def run() -> None:
        voice = _stream_channel(tmp_path, ["10.0.0.1:5060", "10.0.0.2:5070"], "tcp")  # no socket: sends wait
        voice._on_update(LinkLost("tcp", ("10.0.0.2", 5070), "closed by the peer"))
        voice._on_update(LinkLost("tcp", ("10.0.0.2", 5070), "closed by the peer"))  # again at once: not again
        sent = [o for o in voice._pending if isinstance(o, Datagram)]
        assert [o.addr for o in sent] == [("10.0.0.2", 5070)]
        ping = parse(sent[0].data)
        assert isinstance(ping, Request) and ping.method == "OPTIONS" and ping.uri == "sip:10.0.0.2:5070"
        assert [p.state for p in voice.pbxs] == ["up", "up"]  # dropped is not down: the OPTIONS tells

    asyncio.run(run())


def test_a_pbx_given_by_name_is_admitted_from_the_addresses_its_name_has_at_start(tmp_path: Path) -> None:
    import asyncio
    import ipaddress

    voice = _stream_channel(tmp_path, ["localhost:5061", "10.0.0.2:5061"], "tls")  # no crash on a name
    assert [str(n) for n in voice.allowed] == ["10.0.0.2/32"]
    assert [(p.addr, p.tls_server_name) for p in voice.pbxs] == [
        (("localhost", 5061), None),
        (("10.0.0.2", 5061), None),
    ]
    asyncio.run(voice._resolve_sources())
    assert ipaddress.ip_network("127.0.0.1/32") in voice.allowed and len(voice.allowed) >= 2
