"""Who answered and what they pressed (docs/voice.md §6.3, §6.4), end to end against a real SIP stack: PJSIP
(pjsua2, tests/support/pjsip_media_callee.py) answers, plays rendered audio into the call (espeak-ng
speech, a beep, DTMF tones: tests/support/speech.py), records what telgate sends, and presses keys by
RFC 4733 or SIP INFO. Each case reads PJSIP's own record (its message log, its recording) beside the
events. The AMD runs with the shipped defaults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.test_voice import voice_settings
from tests.support import ledger, speech
from tests.support.broker import Mosquitto
from tests.support.certs import Pki
from tests.support.harness import backend, gateway
from tests.support.pjsip_callee import received
from tests.support.sipp import free_udp_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PHONE = "+420601234567"
NUMBER = ledger.digits(PHONE)
FIGURES: dict[str, Any] = {}  # measured figures, printed at the end of the module (docs/voice.md quotes them)


def _prompts(folder: Path) -> Path:
    """The prompts telgate plays: a short menu and a voicemail message (tones, easy to find in a recording)."""
    speech.write_wav(folder / "menu.wav", speech.tone(440, 400, -14))
    speech.write_wav(folder / "message.wav", speech.tone(600, 1500, -14))
    return folder


@dataclass
class Peer:
    """The PJSIP callee process: what it reports, line by line, and its message log."""

    proc: subprocess.Popen[str]
    log: Path
    said: list[str] = field(default_factory=list)
    spoke: asyncio.Event = field(default_factory=asyncio.Event)

    async def reported(self, what: str, patience_s: float = 15.0) -> str:
        try:
            async with asyncio.timeout(patience_s):
                while True:
                    self.spoke.clear()
                    for line in self.said:
                        if line.startswith(what):
                            return line
                    assert self.proc.poll() is None, f"the PJSIP callee exited: {self.said}"
                    await self.spoke.wait()
        except TimeoutError:
            raise AssertionError(f"PJSIP did not report {what!r} within {patience_s} s: {self.said}") from None

    async def finish(self) -> list[str]:
        """Stop it (it hangs up what is left and writes its recording); the SIP messages it received."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        assert await asyncio.to_thread(self.proc.wait, 30) == 0
        return received(self.log.read_text(errors="replace"))


@contextlib.asynccontextmanager
async def pjsip(tmp_path: Path, **spec: Any) -> Any:
    port = free_udp_port()
    spec = {"port": port, "log": str(tmp_path / "pjsip.log"), **spec}
    (tmp_path / "callee.json").write_text(json.dumps(spec))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.pjsip_media_callee", str(tmp_path / "callee.json")],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    peer = Peer(proc, tmp_path / "pjsip.log")
    loop = asyncio.get_running_loop()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            peer.said.append(line.strip())
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(peer.spoke.set)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(peer.spoke.set)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        await peer.reported("ready", 10)
        yield peer, f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(5)


def _dial(campaign: str = "amd", contact: str = "k", **extra: Any) -> dict[str, Any]:
    return {
        "command_id": f"d-{campaign}-{contact}",
        "campaign_id": campaign,
        "contact_id": contact,
        "phone": PHONE,
        "policy": {"max_attempts": 2, "delays_s": [3600]},
        **extra,
    }


def _first_loud_ms(pcm: np.ndarray, after_ms: int = 0, level: float = 300.0) -> int | None:
    """Where the first 5 ms window with RMS over `level` starts, from `after_ms` on."""
    window = 40
    start = after_ms * 8
    n = (pcm.size - start) // window
    if n <= 0:
        return None
    frames = pcm[start : start + n * window].astype(np.float64).reshape(n, window)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > level)
    return None if loud.size == 0 else (start + int(loud[0]) * window) // 8


HELLO = speech.concat(speech.silence(300), speech.at_level(speech.speak("Hello?"), -18), speech.silence(6000))
GREETING = speech.at_level(
    speech.speak("Hi, you have reached the voicemail of John Smith. I can't take your call right now."), -18
)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
async def test_a_person_says_hello_and_is_transferred(codec: str, broker: Mosquitto, tmp_path: Path) -> None:
    play = speech.write_wav(tmp_path / "hello.wav", HELLO)
    async with pjsip(tmp_path, codec=codec, play=str(play)) as (peer, address):
        settings = voice_settings(broker, tmp_path, address, prompts_dir=str(_prompts(tmp_path / "prompts")))
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            connect_to = f"sip:operator@{address}"
            await b.send("dial", _dial(amd={"wait": True}, connect_to=connect_to))
            await b.wait_for(lambda: b.final("amd", "k") or "retry_scheduled" in b.statuses("amd", "k"), timeout=20)
            events = b.unique("amd", "k")
            statuses = [e["status"] for e in events]
            assert statuses == ["initial", "calling", "call_in_progress", "success"], events[-1]["signal"]
            answer = events[2]["signal"]
            assert answer["answered_by"] == "human" and answer["amd_cause"] == "HUMAN", answer
            FIGURES.setdefault("human_amd_ms", []).append(answer["amd_ms"])
            assert events[-1]["signal"]["transfer"] == "ok"
            await peer.reported(f"refer <{connect_to}>")
            messages = await peer.finish()
            # PJSIP followed our REFER by calling the operator (itself): that INVITE is not ours
            ours = [m for m in messages if not m.startswith("INVITE sip:operator@")]
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(ours))
            assert seen.attempts == 1 and seen.wire == 1
            assert [m for m in messages if m.startswith("REFER ")]
            sample = app.recorder.registry.get_sample_value
            assert sample("telgate_amd_results_total", {"campaign": "amd", "answered_by": "human"}) == 1
            assert sample("telgate_amd_decision_seconds_count", {"campaign": "amd"}) == 1


async def test_a_long_greeting_is_a_machine_hung_up_and_retried(broker: Mosquitto, tmp_path: Path) -> None:
    play = speech.write_wav(
        tmp_path / "greeting.wav", speech.concat(speech.silence(200), GREETING, speech.silence(4000))
    )
    async with pjsip(tmp_path, codec="PCMU", play=str(play)) as (peer, address):
        settings = voice_settings(broker, tmp_path, address, prompts_dir=str(_prompts(tmp_path / "prompts")))
        async with backend(broker.url) as b, gateway(settings, channels=()):
            connect_to = f"sip:operator@{address}"
            await b.send("dial", _dial(amd={"wait": True}, connect_to=connect_to))
            await b.wait_for(lambda: b.statuses("amd", "k")[-1:] == ["retry_scheduled"], timeout=20)
            events = b.unique("amd", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "retry_scheduled"]
            last = events[-1]["signal"]
            assert last["answered_by"] == "machine_start" and last["outcome"] == "machine", last
            assert last["kind"] == "hangup"  # we hung up
            FIGURES.setdefault("machine_amd_ms", []).append((last["amd_ms"], last["amd_cause"]))
            messages = await peer.finish()
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(messages))
            assert seen.attempts == 1 and seen.wire == 1
            assert not [m for m in messages if m.startswith("REFER ")]  # a machine is never transferred
            assert [m for m in messages if m.startswith("BYE ")]


@pytest.mark.parametrize(
    ("gap_ms", "beep_hz"),
    [(500, 1000), (500, 1400), (2000, 1000), (2000, 1400)],
    ids=["0.5s-1000Hz", "0.5s-1400Hz", "2s-1000Hz", "2s-1400Hz"],
)
async def test_a_message_is_left_after_the_beep(gap_ms: int, beep_hz: int, broker: Mosquitto, tmp_path: Path) -> None:
    """The beep right after the greeting, and 2 s after it (the complaint users make most: "a beep missed
    because it came 2 s after the greeting"): the message starts after the beep ended, within 300 ms."""
    audio = speech.concat(
        speech.silence(200), GREETING, speech.silence(gap_ms), speech.beep(beep_hz, 400), speech.silence(8000)
    )
    beep_end_ms = (200 * 8 + GREETING.size + gap_ms * 8 + 400 * 8) // 8
    play = speech.write_wav(tmp_path / "machine.wav", audio)
    record = tmp_path / "heard.wav"
    async with pjsip(tmp_path, codec="PCMA", play=str(play), record=str(record)) as (peer, address):
        settings = voice_settings(broker, tmp_path, address, prompts_dir=str(_prompts(tmp_path / "prompts")))
        async with backend(broker.url) as b, gateway(settings, channels=()):
            amd = {"on_machine": "leave_message", "message_prompt": "message.wav"}
            await b.send("dial", _dial(amd=amd, prompt="menu.wav"))
            await b.wait_for(lambda: b.final("amd", "k"), timeout=30)
            events = b.unique("amd", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            message, end = events[2]["signal"], events[-1]["signal"]
            assert message["answered_by"] == "machine_end_beep", message
            assert end["answered_by"] == "machine_end_beep" and end["outcome"] == "message", end
            assert abs(message["beep_end_ms"] - beep_end_ms) <= 60, (message, beep_end_ms)
            messages = await peer.finish()
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(messages))
            assert seen.attempts == 1 and seen.wire == 1
            assert [m for m in messages if m.startswith("BYE ")]  # we hung up after the message
    heard = speech.read_wav(record)  # what PJSIP received from telgate, from the moment its media was up
    start_ms = _first_loud_ms(heard)
    assert start_ms is not None, "PJSIP recorded nothing of our message"
    gap = start_ms - beep_end_ms
    FIGURES.setdefault("beep_to_prompt_ms", {})[f"{gap_ms}ms/{beep_hz}Hz"] = gap
    # the message starts after the beep ended (never over the greeting or the beep), within 300 ms of it;
    # the allowance is PJSIP's jitter buffer and its recorder's frame, which the recording includes
    assert 0 < gap <= 300 + 100, gap
    tone_ms = _first_loud_ms(heard, start_ms + 50)
    assert tone_ms is not None and _first_loud_ms(heard, start_ms + 1700) is None  # 1.5 s of message, once


async def test_a_fax_is_hung_up_never_transferred_and_retried(broker: Mosquitto, tmp_path: Path) -> None:
    """A fax machine answers with CED (2,100 Hz): `fax`, we BYE, no REFER though the dial has connect_to,
    and the attempt is retried as `unreachable` is."""
    play = speech.write_wav(
        tmp_path / "fax.wav", speech.concat(speech.silence(200), speech.ced(3300, -14), speech.silence(4000))
    )
    async with pjsip(tmp_path, codec="PCMU", play=str(play)) as (peer, address):
        settings = voice_settings(broker, tmp_path, address, prompts_dir=str(_prompts(tmp_path / "prompts")))
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            connect_to = f"sip:operator@{address}"
            await b.send("dial", _dial(amd={"wait": True}, connect_to=connect_to))
            await b.wait_for(lambda: b.statuses("amd", "k")[-1:] == ["retry_scheduled"], timeout=20)
            events = b.unique("amd", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "retry_scheduled"]
            last = events[-1]["signal"]
            assert last["answered_by"] == "fax" and last["amd_cause"] == "FAX", last
            assert last["kind"] == "hangup"  # we hung up
            FIGURES.setdefault("fax_amd_ms", []).append(last["amd_ms"])
            sample = app.recorder.registry.get_sample_value
            assert sample("telgate_amd_results_total", {"campaign": "amd", "answered_by": "fax"}) == 1
            messages = await peer.finish()
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(messages))
            assert seen.attempts == 1 and seen.wire == 1  # PJSIP's log: one INVITE, none to the operator
            assert not [m for m in messages if m.startswith("REFER ")]
            assert [m for m in messages if m.startswith("BYE ")]
            assert not [line for line in peer.said if line.startswith("refer ")]


NOISY_GREETING = speech.add_noise(speech.concat(speech.silence(200), GREETING, speech.silence(4000)), 15, seed=24)
NOISY_HELLO = speech.add_noise(HELLO, 15, seed=25)


async def test_a_greeting_over_noise_is_a_machine(broker: Mosquitto, tmp_path: Path) -> None:
    """A greeting with background noise 15 dB below it (white, over the whole call, the silences too)."""
    play = speech.write_wav(tmp_path / "greeting.wav", NOISY_GREETING)
    async with pjsip(tmp_path, codec="PCMA", play=str(play)) as (peer, address):
        settings = voice_settings(broker, tmp_path, address, prompts_dir=str(_prompts(tmp_path / "prompts")))
        async with backend(broker.url) as b, gateway(settings, channels=()):
            connect_to = f"sip:operator@{address}"
            await b.send("dial", _dial(amd={"wait": True}, connect_to=connect_to))
            await b.wait_for(lambda: b.statuses("amd", "k")[-1:] == ["retry_scheduled"], timeout=20)
            events = b.unique("amd", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "retry_scheduled"]
            last = events[-1]["signal"]
            assert last["answered_by"] == "machine_start" and last["outcome"] == "machine", last
            FIGURES.setdefault("noisy_machine_amd_ms", []).append((last["amd_ms"], last["amd_cause"]))
            messages = await peer.finish()
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(messages))
            assert seen.attempts == 1 and seen.wire == 1
            assert not [m for m in messages if m.startswith("REFER ")]
            assert [m for m in messages if m.startswith("BYE ")]


async def test_a_hello_over_noise_is_a_person(broker: Mosquitto, tmp_path: Path) -> None:
    """ "Hello?" with noise 15 dB below it: the noise after the word is silence to the detector (its floor),
    so the person is `human` and transferred."""
    play = speech.write_wav(tmp_path / "hello.wav", NOISY_HELLO)
    async with pjsip(tmp_path, codec="PCMU", play=str(play)) as (peer, address):
        settings = voice_settings(broker, tmp_path, address, prompts_dir=str(_prompts(tmp_path / "prompts")))
        async with backend(broker.url) as b, gateway(settings, channels=()):
            connect_to = f"sip:operator@{address}"
            await b.send("dial", _dial(amd={"wait": True}, connect_to=connect_to))
            await b.wait_for(lambda: b.final("amd", "k") or "retry_scheduled" in b.statuses("amd", "k"), timeout=20)
            events = b.unique("amd", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            answer = events[2]["signal"]
            assert answer["answered_by"] == "human" and answer["amd_cause"] == "HUMAN", answer
            FIGURES.setdefault("noisy_human_amd_ms", []).append(answer["amd_ms"])
            assert events[-1]["signal"]["transfer"] == "ok"
            await peer.reported(f"refer <{connect_to}>")
            messages = await peer.finish()
            ours = [m for m in messages if not m.startswith("INVITE sip:operator@")]
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(ours))
            assert seen.attempts == 1 and seen.wire == 1
            assert [m for m in messages if m.startswith("REFER ")]


KEYS = {"1": "confirm", "9": "opt_out"}


@pytest.mark.parametrize(
    ("method", "digit", "codec"),
    [("rfc4733", "1", "PCMU"), ("info", "9", "PCMA"), ("inband", "1", "PCMA"), ("inband", "9", "PCMU")],
)
async def test_keys_map_to_confirm_and_opt_out(
    method: str, digit: str, codec: str, broker: Mosquitto, tmp_path: Path
) -> None:
    spec: dict[str, Any] = {"codec": codec}
    if method == "inband":  # a phone that sends the tones in the audio: pressed 2 s after the answer
        tones = speech.concat(speech.silence(2000), speech.dtmf(digit, 120, 120, -10), speech.silence(3000))
        spec["play"] = str(speech.write_wav(tmp_path / "keys.wav", tones))
    else:
        spec["keys"] = [{"after_s": 2.0, "digits": digit, "method": method}]
    async with pjsip(tmp_path, **spec) as (peer, address):
        settings = voice_settings(broker, tmp_path, address, prompts_dir=str(_prompts(tmp_path / "prompts")))
        async with backend(broker.url) as b, gateway(settings, channels=()) as app:
            await b.send("dial", _dial(prompt="menu.wav", gather={"max_digits": 1}, digits=KEYS))
            await b.wait_for(lambda: b.final("amd", "k"), timeout=20)
            events = b.unique("amd", "k")
            assert [e["status"] for e in events] == ["initial", "calling", "call_in_progress", "success"]
            end = events[-1]["signal"]
            assert end["digits"] == digit and end["outcome"] == KEYS[digit], end
            sample = app.recorder.registry.get_sample_value
            labels = {"campaign": "amd", "finish": "max_digits", "outcome": KEYS[digit]}
            assert sample("telgate_dtmf_gathers_total", labels) == 1
            assert sample("telgate_dtmf_digits_total", {"campaign": "amd", "via": method}) == 1  # counted once
            if KEYS[digit] == "opt_out":  # the number is on the blacklist: another campaign's dial is refused
                await b.send("dial", _dial(campaign="other", contact="k2"))
                await b.wait_for(lambda: b.final("other", "k2"), timeout=10)
                assert b.statuses("other", "k2") == ["initial", "blacklisted"]
            messages = await peer.finish()
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(messages))
            assert seen.wire == 1  # one INVITE for the number: none for the blacklisted dial
            if method == "info":  # PJSIP's record: our 200 to its INFO
                assert [m for m in messages if m.startswith("SIP/2.0 200") and re.search(r"^CSeq: \d+ INFO", m, re.M)]


async def test_over_tls_a_machine_is_hung_up(broker: Mosquitto, tmp_path: Path) -> None:
    """The trunk over TLS (PJSIP's TLS listener, our certificate check): the audio arrives all the same."""
    pki = Pki(tmp_path / "pki")
    cert = pki.issue("pbx")
    play = speech.write_wav(
        tmp_path / "greeting.wav", speech.concat(speech.silence(200), GREETING, speech.silence(4000))
    )
    spec = {"codec": "PCMA", "play": str(play), "transport": "tls"}
    async with pjsip(tmp_path, **spec, cert=str(cert.cert), key=str(cert.key), ca=str(pki.ca)) as (peer, address):
        settings = voice_settings(
            broker, tmp_path, address, transport="tls", ca_file=str(pki.ca), prompts_dir=str(_prompts(tmp_path / "p"))
        )
        async with backend(broker.url) as b, gateway(settings, channels=()):
            await b.send("dial", _dial(amd={"wait": True}))
            await b.wait_for(lambda: b.statuses("amd", "k")[-1:] == ["retry_scheduled"], timeout=20)
            last = b.unique("amd", "k")[-1]["signal"]
            assert last["answered_by"] == "machine_start" and last["outcome"] == "machine", last
            messages = await peer.finish()
            seen = await ledger.check(b, "voice", lambda: ledger.invites_in(messages))
            assert seen.attempts == 1 and seen.wire == 1


@pytest.fixture(scope="module", autouse=True)
def _report_figures() -> Iterator[None]:
    yield
    if FIGURES:
        print(f"\namd/dtmf figures: {FIGURES}")
