"""Several PBXs: which one a new call goes to (the voice channel's choice, no sockets needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gateway.config import load_settings
from gateway.engine import Engine, Topics
from gateway.store.sqlite import SqliteStore
from gateway.voice_channel import VoiceChannel
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
    a.state = "down"
    assert {voice.choose().address for _ in range(4)} == {b.address}
    b.state = "down"
    assert {voice.choose().address for _ in range(4)} == {c.address} and voice.state == "up"
    c.state = "down"  # none answers: calls still go to the best (and Timer B or 5 failures tell)
    assert voice.state == "down" and {voice.choose().address for _ in range(4)} == {a.address, b.address}
    assert voice.recorder.registry.get_sample_value("telgate_pbx_up", {"pbx": "10.0.0.3:5060"}) == 1


def test_a_plain_string_is_one_pbx_as_before(tmp_path: Path) -> None:
    voice = channel(tmp_path, "10.0.0.9:5070")
    assert [(p.address, p.addr, p.priority) for p in voice.pbxs] == [("10.0.0.9:5070", ("10.0.0.9", 5070), 1)]
    assert voice.ua.pbx == ("10.0.0.9", 5070) and voice.ua.cfg.pbx == "10.0.0.9:5070"
    assert [str(n) for n in voice.allowed] == ["10.0.0.9/32"]
