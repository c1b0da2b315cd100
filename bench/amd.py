"""Answering-machine detection benchmark: telgate's sip.amd.Amd beside Asterisk app_amd's algorithm.

    python -m bench.amd [--calls 300] [--seed 1] [--quick] [--json PATH]
    python -m bench.amd --live 200 [--live-seconds 30] [--live-pool 60] [--seed 1] [--json PATH]

- A corpus of answered calls is rendered in memory (tests/support/speech.py: espeak-ng + sox in a temp
  dir, nothing stored): people answering ("Hello?", "Yes, speaking", "Hello, this is Jana", one word then
  silence) in several voices, rates and pitches; machine greetings of 5-20 s, half of them followed by a
  beep (440-1,800 Hz, 0.2-2 s after the greeting); dead air; fax answer tones (CED, plain and ANSam);
  ringback heard after the answer. Each with white or pink noise (none, 30, 20 or 15 dB SNR), through
  PCMU or PCMA, with 0-3 % of its 20 ms packets lost and 0.5 % arriving after their successor.
- Truth: a person is `human`; a greeting `machine_start` then `machine_end_beep` or
  `machine_end_silence`; dead air `machine_start` (app_amd's INITIALSILENCE rule, which both follow);
  CED `fax`; ringback `unknown` (no one and nothing answered yet).
- Both classifiers get the same frames of the same call in the same run. Reported per classifier: the
  confusion matrix of the first verdict, accuracy, humans taken for machines, decision time from the
  answer (p50/p95) for humans and machines, and for the people both called human; beside them app_amd
  with maximum_number_of_words 3 (its compiled default) and telgate with app_amd's energy rule instead of
  webrtcvad (`vad="energy"`); for telgate also the machine end (beep or silence) and the
  delay from the beep's true end to machine_end_beep, CPU per analysed call-second and the calls one
  core sustains in real time.
- Tuning and reporting are split: the figures are given for the corpus the classifier was tuned on
  (`--seed`) and for a held-out corpus rendered with another seed (`--seed` + 1000).

`--live N` (off by default; replaces the offline run) measures the path the voice channel runs per packet,
under load: N concurrent calls' RTP into ONE receiving process. The receiver (pinned to core 0) runs what
gateway/channels/voice.py runs for a call it listens to: one UDP socket with sip/media.py's MediaEndpoint
demultiplexing by source address, per call a sip/listen.py CallListener (sip/rtp_in.py's RtpReceiver,
sip/amd.py's Amd with the shipped defaults, `until_end` as for `leave_message`, the heavier case) and the
channel's one timer for the listeners' deadlines, on the asyncio loop, the socket's receive buffer left
at the kernel's default as the channel leaves it. The sender (this process, pinned to core 1) paces the
packets in real time: `--live-pool` calls rendered as above (quick corpus: greetings of 5-9 s, three
voices; noise, loss and reordering included), each of the N slots its own UDP source port playing them
back to back (a slot's call lasts until 500 ms after its offline AMD was done; the next starts 100 ms
later with a new SSRC and a new listener), 20 ms G.711 packets, each sent when its 20 ms of audio exists.
Reported: the receiver's CPU share of its core (mean over the run, and its busiest second), the listeners
analysing at once, whether every verdict came and equals the offline one, how late (the verdict's wall
time from the call's start minus the same call's offline decision time, p50/p95/max; the floor is the
receiver's 60 ms of reordering), the greeting ends likewise, and packets dropped (sent minus received, and
the kernel's count for the socket), with the receive buffer's size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import resource
import socket
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.amd_baseline import AppAmdBaseline
from sip import rtp
from sip.amd import Amd, AmdEvent, AmdParams, AmdVerdict, MachineEnd
from sip.listen import CallListener, GreetingEnded, Verdict
from sip.media import MediaEndpoint
from sip.sdp import PCMA, PCMU
from tests.support import speech as S

HUMAN_PHRASES = (
    "Hello?",
    "Yes, speaking.",
    "Hello, this is Jana.",
    "Hi.",
    "Yeah?",
    "Hello, who is this?",
    "Good morning.",
    "Speaking.",
)
HUMAN_PHRASES_LOCAL = {
    "cs": ("Haló?", "Ano, prosím.", "Dobrý den, tady Jana.", "Prosím?"),
    "de": ("Hallo?", "Ja, bitte?", "Guten Tag, hier ist Jana.", "Ja?"),
    "fr-fr": ("Allô?", "Oui, j'écoute.", "Bonjour, c'est Jana.", "Oui?"),
}
GREETING_SENTENCES = (
    "Hi, you have reached Jana.",
    "I'm not available to take your call right now.",
    "Please leave your name, number and a short message after the tone.",
    "I will get back to you as soon as I can.",
    "Thank you for calling, and have a great day.",
    "You can also reach me by email at jana at example dot com.",
    "If this is urgent, please call my office during business hours.",
    "The person you are calling is not available.",
    "Sorry I missed your call.",
)
GREETING_LOCAL = {
    "cs": (
        "Dobrý den, dovolali jste se Janě.",
        "Momentálně nemohu hovor přijmout.",
        "Zanechte prosím vzkaz po zaznění signálu.",
    ),
    "de": (
        "Hallo, Sie haben Jana erreicht.",
        "Ich bin im Moment nicht erreichbar.",
        "Bitte hinterlassen Sie eine Nachricht nach dem Ton.",
    ),
    "fr-fr": (
        "Bonjour, vous êtes bien chez Jana.",
        "Je ne suis pas disponible pour le moment.",
        "Laissez un message après le bip.",
    ),
}
VOICES = ("en-us", "en-gb", "cs", "de", "fr-fr", "en-us+f3", "en-gb+m3")
BEEP_HZ = (440, 850, 1000, 1400, 1800)
KINDS = ("human", "human", "human", "machine", "machine_beep", "machine_beep", "silence", "fax", "ringback")
TRUTH = {
    "human": "human",
    "machine": "machine_start",
    "machine_beep": "machine_start",
    "silence": "machine_start",
    "fax": "fax",
    "ringback": "unknown",
}
CLASSES = ("human", "machine_start", "fax", "unknown")
TAIL_MS = 4000


@dataclass(frozen=True)
class Call:
    kind: str
    audio: S.Pcm
    packets: list[tuple[int, S.Pcm]]
    beep_end_ms: int | None
    describe: str


def _lang(voice: str) -> str:
    return voice.split("+")[0]


def render_call(rng: random.Random, seed: int, quick: bool) -> Call:
    kind = rng.choice(KINDS)
    voice = rng.choice(VOICES[:3] if quick else VOICES)
    lang = _lang(voice)
    rate = rng.choice((130, 150, 170, 190))
    pitch = rng.choice((30, 45, 60, 75))
    beep_end: int | None = None
    parts: list[S.Pcm] = [S.silence(rng.choice((100, 200, 300, 500, 800)))]
    level = rng.uniform(-26, -14)
    if kind == "human":
        phrases = HUMAN_PHRASES_LOCAL.get(lang, HUMAN_PHRASES)
        text = rng.choice(phrases)
        parts.append(S.at_level(S.speak(text, voice, rate, pitch), level))
        if rng.random() < 0.25:  # "Hello? ... Hello?": they speak again after a pause
            parts += [S.silence(rng.choice((1200, 1800))), S.at_level(S.speak(text, voice, rate, pitch), level)]
        parts.append(S.silence(TAIL_MS + 2000))
        describe = f"{voice} {rate}wpm '{text}'"
    elif kind in ("machine", "machine_beep"):
        sentences = GREETING_LOCAL.get(lang, GREETING_SENTENCES)
        target_s = rng.uniform(5, 20) if not quick else rng.uniform(5, 9)
        text, greeting = "", S.silence(0)
        while greeting.size < target_s * S.RATE:
            text += " " + rng.choice(sentences)
            greeting = S.speak(text.strip(), voice, rate, pitch)
        parts.append(S.at_level(greeting, level))
        describe = f"{voice} {rate}wpm greeting {greeting.size / S.RATE:.1f}s"
        if kind == "machine_beep":
            delay = rng.choice((200, 500, 1000, 1500, 2000)) + rng.randrange(20)  # not on a frame boundary
            hz, length = rng.choice(BEEP_HZ), rng.choice((200, 400, 700, 1000))
            parts += [S.silence(delay), S.beep(hz, length, level + rng.uniform(0, 8))]
            beep_end = sum(p.size for p in parts) * 1000 // S.RATE
            describe += f" beep {hz}Hz {length}ms +{delay}ms"
        parts.append(S.silence(TAIL_MS))
    elif kind == "silence":
        parts.append(S.silence(8000))
        describe = "dead air"
    elif kind == "fax":
        ansam = rng.random() < 0.5
        parts += [S.ced(3300, level, ansam=ansam), S.silence(3000)]
        describe = "CED" + (" ANSam" if ansam else "")
    else:
        parts.append(S.ringback(12000, level))
        describe = "ringback"
    audio = S.concat(*parts)
    snr = rng.choice((None, 30, 20, 15))
    if snr is not None:
        noise = rng.choice(("white", "pink"))
        audio = S.add_noise(audio, snr, seed, noise) if kind != "silence" else _noisy_silence(audio, snr, seed, noise)
        describe += f" {noise} {snr}dB"
    codec = rng.choice((PCMU, PCMA))
    audio = S.g711_round_trip(audio, codec)
    loss = rng.choice((0.0, 0.01, 0.02, 0.03))
    describe += f" {'PCMU' if codec == PCMU else 'PCMA'} loss {loss:.0%}"
    packets = S.packets(audio, loss, seed)
    for i in range(1, len(packets)):  # jitter beyond the buffer: 0.5 % of packets come after their successor
        if rng.random() < 0.005:
            packets[i - 1], packets[i] = packets[i], packets[i - 1]
    return Call(kind, audio, packets, beep_end, describe)


def _noisy_silence(audio: S.Pcm, snr: float, seed: int, kind: str) -> S.Pcm:
    """Dead air with noise `snr` below speech at -20 dBFS."""
    noise = (S.white_noise if kind == "white" else S.pink_noise)(audio.size * 1000 / S.RATE, -20 - snr, seed)
    return S.concat(noise[: audio.size])


def corpus(n: int, seed: int, quick: bool) -> list[Call]:
    rng = random.Random(seed)
    return [render_call(rng, seed * 100_000 + i, quick) for i in range(n)]


@dataclass
class Outcome:
    verdict: AmdVerdict
    end: MachineEnd | None
    cpu_s: float
    audio_s: float


def run(classifier: Amd | AppAmdBaseline, call: Call) -> Outcome:
    events: list[AmdEvent] = []
    cpu = time.process_time()
    last = 0
    for t, frame in call.packets:
        events += classifier.feed(frame, t)
        last = t + 20
        if isinstance(classifier, Amd) and classifier.done:
            break
        if isinstance(classifier, AppAmdBaseline) and classifier.verdict is not None:
            break
    events += classifier.finish(max(last, call.audio.size * 1000 // S.RATE))
    cpu = time.process_time() - cpu
    verdict = next(e for e in events if isinstance(e, AmdVerdict))
    end = next((e for e in events if isinstance(e, MachineEnd)), None)
    return Outcome(verdict, end, cpu, last / 1000)


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(values, q))


def score(calls: list[Call], outcomes: list[Outcome], with_end: bool) -> dict[str, Any]:
    matrix = {t: dict.fromkeys(CLASSES, 0) for t in CLASSES}
    by_kind: dict[str, list[int]] = {}
    human_ms, machine_ms = [], []
    for call, out in zip(calls, outcomes, strict=True):
        truth, got = TRUTH[call.kind], out.verdict.answered_by
        matrix[truth][got] += 1
        ok = by_kind.setdefault(call.kind, [0, 0])
        ok[0] += truth == got
        ok[1] += 1
        if truth == got == "human":
            human_ms.append(out.verdict.ms)
        if truth == got == "machine_start" and call.kind != "silence":
            machine_ms.append(out.verdict.ms)
    humans = sum(matrix["human"].values())
    report: dict[str, Any] = {
        "calls": len(calls),
        "accuracy": round(sum(matrix[c][c] for c in CLASSES) / len(calls), 4),
        "human_taken_for_machine": round(matrix["human"]["machine_start"] / humans, 4) if humans else None,
        "confusion (truth -> verdict)": matrix,
        "accuracy_by_kind": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_kind.items())},
        "human_decision_ms_p50_p95": [_pct(human_ms, 50), _pct(human_ms, 95)],
        "machine_decision_ms_p50_p95": [_pct(machine_ms, 50), _pct(machine_ms, 95)],
    }
    if with_end:
        ends: dict[str, dict[str, int]] = {}
        delays = []
        for call, out in zip(calls, outcomes, strict=True):
            if call.kind not in ("machine", "machine_beep") or out.verdict.answered_by != "machine_start":
                continue
            truth = "machine_end_beep" if call.kind == "machine_beep" else "machine_end_silence"
            end = out.end.answered_by if out.end else "none"
            ends.setdefault(truth, {}).setdefault(end, 0)
            ends[truth][end] += 1
            if end == "machine_end_beep" and call.beep_end_ms is not None and out.end is not None:
                delays.append(out.end.t_ms - call.beep_end_ms)
        cpu = sum(o.cpu_s for o in outcomes)
        audio = sum(o.audio_s for o in outcomes)
        report["machine_end (truth -> got)"] = ends
        report["beep_end_to_event_ms_p50_p95_max"] = [_pct(delays, 50), _pct(delays, 95), max(delays, default=None)]
        report["beep_end_within_300ms"] = f"{sum(d <= 300 for d in delays)}/{len(delays)}"
        report["cpu_ms_per_call_second"] = round(1000 * cpu / audio, 3) if audio else None
        report["realtime_calls_per_core"] = int(audio / cpu) if cpu else None
    return report


def evaluate(calls: list[Call]) -> dict[str, Any]:
    telgate = [run(Amd(), c) for c in calls]
    baseline = [run(AppAmdBaseline(), c) for c in calls]
    words3 = [run(AppAmdBaseline(AmdParams(maximum_number_of_words=3)), c) for c in calls]
    energy = [run(Amd(AmdParams(vad="energy")), c) for c in calls]
    both = [
        (t.verdict.ms, b.verdict.ms)
        for t, b in zip(telgate, baseline, strict=True)
        if t.verdict.answered_by == b.verdict.answered_by == "human"
    ]
    return {
        "telgate": score(calls, telgate, True),
        "app_amd": score(calls, baseline, False),
        "app_amd_words3": score(calls, words3, False),
        "telgate_energy_vad": score(calls, energy, True),
        "humans_both_called_human": {
            "calls": len(both),
            "telgate_ms_p50_p95": [_pct([t for t, _ in both], 50), _pct([t for t, _ in both], 95)],
            "app_amd_ms_p50_p95": [_pct([b for _, b in both], 50), _pct([b for _, b in both], 95)],
            "telgate_later_by_ms_mean": round(float(np.mean([t - b for t, b in both])), 1) if both else None,
        },
    }


def mistakes(calls: list[Call], limit: int = 20) -> list[str]:
    out = []
    for c in calls:
        o = run(Amd(), c)
        end = {"machine": "machine_end_silence", "machine_beep": "machine_end_beep"}.get(c.kind)
        if o.verdict.answered_by != TRUTH[c.kind] or (end and o.end and o.end.answered_by != end):
            out.append(f"{c.kind}: {c.describe} -> {o.verdict} {o.end}")
    return out[:limit]


# -- --live N: the channel's per-packet path under load ----------------------------------------------------

LIVE_TAIL_MS = 500  # a slot's call goes on this long after its offline AMD was done
LIVE_GAP_S = 0.1  # between a slot's calls
LIVE_LEAD_S = 1.0  # from the schedule's handover to the first call


@dataclass(frozen=True)
class Offline:
    """One pool call through sip.amd.Amd offline (as `run`, listening on to the greeting's end)."""

    verdict: AmdVerdict
    end: MachineEnd | None
    done_ms: int  # the last event decided by a frame (the end, else the verdict)
    payload_type: int
    payloads: list[tuple[int, int, bytes]]  # (send slot ms, RTP timestamp ms, G.711 payload) in sending order


def offline(call: Call) -> Offline:
    amd = Amd()
    events: list[AmdEvent] = []
    for t, frame in call.packets:
        events += amd.feed(frame, t)
        if amd.done:
            break
    done_ms = max((e.ms if isinstance(e, AmdVerdict) else e.t_ms for e in events), default=0)
    events += amd.finish(call.audio.size * 1000 // S.RATE)
    verdict = next(e for e in events if isinstance(e, AmdVerdict))
    end = next((e for e in events if isinstance(e, MachineEnd)), None)
    pt = PCMU if "PCMU" in call.describe else PCMA
    limit = done_ms + LIVE_TAIL_MS
    slots = sorted(t for t, _ in call.packets)  # a packet that comes after its successor takes its slot
    payloads = [
        (slot, t, rtp.encode(frame.astype("<i2").tobytes(), pt))
        for slot, (t, frame) in zip(slots, call.packets, strict=True)
        if slot < limit
    ]
    return Offline(verdict, end, done_ms, pt, payloads)


@dataclass(frozen=True)
class Placed:
    """One call of a slot: which pool call, when it starts (the answer), its SSRC."""

    slot: int
    index: int
    start_s: float  # from the schedule's zero
    ssrc: int


def schedule(n: int, seconds: float, pool: list[Offline], seed: int) -> list[Placed]:
    rng = random.Random(seed)
    placed = []
    for slot in range(n):
        t = rng.uniform(0, 1.0)  # the answers spread over the first second
        while t < seconds:
            index = rng.randrange(len(pool))
            placed.append(Placed(slot, index, t, rng.getrandbits(32)))
            t += (pool[index].done_ms + LIVE_TAIL_MS) / 1000 + LIVE_GAP_S
    return placed


def _kernel_drops(port: int) -> int | None:
    """The kernel's drop count for the local UDP socket on `port` (/proc/net/udp's last column)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    return None


async def _receive(conn: Any, pool: list[Offline], plan: list[Placed], sources: list[tuple[str, int]]) -> None:
    """The receiving process: the channel's per-packet path for every call of the plan."""
    loop = asyncio.get_running_loop()
    endpoint = MediaEndpoint()
    transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, local_addr=("127.0.0.1", 0))
    sock = transport.get_extra_info("socket")
    port = transport.get_extra_info("sockname")[1]
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    conn.send(("port", port, sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), affinity))
    zero = conn.recv()
    listening: dict[int, CallListener] = {}  # the plan's index → its listener, while active
    current: dict[int, int] = {}  # slot → the plan's index of its call
    results: dict[int, dict[str, Any]] = {}
    wake = asyncio.Event()
    armed: list[float | None] = [None]

    def rearm(listener: CallListener) -> None:  # the channel's _rearm_listening
        at = listener.deadline()
        if at is not None and (armed[0] is None or at < armed[0]):
            wake.set()

    def heard(k: int, items: list[Any], now: float) -> None:  # with the wall time since the call's answer
        since = now - (zero + plan[k].start_s)
        for item in items:
            if isinstance(item, Verdict):
                results[k]["verdict"] = (item.verdict.answered_by, item.verdict.cause, item.verdict.ms, since)
            elif isinstance(item, GreetingEnded):
                results[k]["end"] = (item.end.answered_by, item.end.t_ms, since)

    def hear(k: int, listener: CallListener, items: list[Any], now: float) -> None:  # the channel's _hear
        heard(k, items, now)
        if not listener.active:
            listening.pop(k, None)
        else:
            rearm(listener)

    def sink(k: int, listener: CallListener, data: bytes) -> None:  # the channel's _rtp
        if not listener.active:
            return
        now = loop.time()
        hear(k, listener, listener.packet(data, now), now)

    def begin(k: int) -> None:  # the answer: the call's listener, its far end's RTP attached
        call = plan[k]
        answered_at = zero + call.start_s
        if (previous := current.get(call.slot)) is not None:  # the slot's last call ended
            listening.pop(previous, None)
            endpoint.detach(sources[call.slot])
        listener = CallListener(answered_at)
        listener.listen_amd(AmdParams(), until_end=True)
        listening[k] = listener
        current[call.slot] = k
        results[k] = {}
        endpoint.attach(sources[call.slot], lambda data: sink(k, listener, data))
        rearm(listener)

    async def timer() -> None:  # the channel's _listen_timer
        while True:
            wake.clear()
            due = [d for li in listening.values() if (d := li.deadline()) is not None]
            at = armed[0] = min(due, default=None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if at is None else max(0.0, at - loop.time())):
                    await wake.wait()
                    continue
            armed[0] = None
            now = loop.time()
            for k, listener in list(listening.items()):
                at = listener.deadline()
                if at is not None and at <= now:
                    hear(k, listener, listener.tick(now), now)

    samples: list[tuple[float, float, int]] = []  # (wall, CPU, listeners analysing)

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def sampler() -> None:
        while True:
            samples.append((loop.time(), cpu(), len(listening)))
            await asyncio.sleep(1.0)

    for k, call in enumerate(plan):
        loop.call_at(zero + call.start_s, begin, k)
    tasks = [asyncio.ensure_future(timer())]
    await asyncio.sleep(max(0.0, zero - loop.time()))
    tasks.append(asyncio.ensure_future(sampler()))
    last_end = max(c.start_s + (pool[c.index].done_ms + LIVE_TAIL_MS) / 1000 for c in plan)
    await asyncio.sleep(max(0.0, zero + last_end + 0.5 - loop.time()))
    samples.append((loop.time(), cpu(), len(listening)))
    for task in tasks:
        task.cancel()
    conn.send(
        (
            "done",
            results,
            samples,
            endpoint.received_packets,
            endpoint.stray_packets,
            _kernel_drops(port),
        )
    )
    transport.close()


def _receiver(conn: Any, pool: list[Offline], plan: list[Placed], sources: list[tuple[str, int]]) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {0})
    asyncio.run(_receive(conn, pool, plan, sources))


def live(n: int, seconds: float, pool_size: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    calls = corpus(pool_size, seed, True)
    pool = [offline(c) for c in calls]
    rendered = time.perf_counter() - started
    plan = schedule(n, seconds, pool, seed)
    socks = []
    for _ in range(n):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        socks.append(sock)
    sources = [s.getsockname() for s in socks]
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child, pool, plan, sources), daemon=True)
    proc.start()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {1})
    # every packet of the run, built before it starts (after the fork: the receiver
    # inherits none of it): (send time from zero, slot, datagram)
    sends: list[tuple[float, int, bytes]] = []
    for call in plan:
        o = pool[call.index]
        seq0 = call.ssrc & 0xFFFF
        for slot_ms, t_ms, payload in o.payloads:
            header = struct.pack("!BBHII", 0x80, o.payload_type, (seq0 + t_ms // 20) & 0xFFFF, t_ms * 8, call.ssrc)
            sends.append((call.start_s + (slot_ms + 20) / 1000, call.slot, header + payload))
    sends.sort(key=lambda s: s[0])
    _, port, rcvbuf, affinity = parent.recv()
    zero = time.monotonic() + LIVE_LEAD_S  # asyncio's loop.time() is time.monotonic()
    parent.send(zero)
    dest = ("127.0.0.1", port)
    sent, blocked, late = 0, 0, []
    for at, slot, data in sends:
        wait = zero + at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late.append(-wait)
        try:
            socks[slot].sendto(data, dest)
            sent += 1
        except BlockingIOError:
            blocked += 1
    _, results, samples, received, stray, kernel_drops = parent.recv()
    proc.join(10)
    for sock in socks:
        sock.close()
    report = _live_report(n, seconds, pool, plan, results, samples, sent, received, stray, kernel_drops, rcvbuf, late)
    return report | {
        "sender_blocked": blocked,
        "receiver_core": affinity,
        "pool_calls": pool_size,
        "render_s": round(rendered, 1),
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _live_report(
    n: int,
    seconds: float,
    pool: list[Offline],
    plan: list[Placed],
    results: dict[int, dict[str, Any]],
    samples: list[tuple[float, float, int]],
    sent: int,
    received: int,
    stray: int,
    kernel_drops: int | None,
    rcvbuf: int,
    late: list[float],
) -> dict[str, Any]:
    came = same = 0
    verdict_late, media_shift, end_late = [], [], []
    ends_expected = ends_came = 0
    for k, call in enumerate(plan):
        o, got = pool[call.index], results.get(k, {})
        if "verdict" in got:
            came += 1
            answered_by, cause, ms, wall = got["verdict"]
            same += answered_by == o.verdict.answered_by and cause == o.verdict.cause
            verdict_late.append(wall * 1000 - o.verdict.ms)
            media_shift.append(ms - o.verdict.ms)
        if o.end is not None and o.end.t_ms <= o.done_ms and o.verdict.answered_by == "machine_start":
            ends_expected += 1
            if "end" in got:
                ends_came += 1
                end_late.append(got["end"][2] * 1000 - o.end.t_ms)
    t0, c0, _ = samples[0]
    t1, c1, _ = samples[-1]
    per_second = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(samples) if b[0] > a[0]]
    # the seconds in which at least 90 % of the N slots were analysing (sampled at both ends of the second)
    full = [
        (b[1] - a[1]) / (b[0] - a[0])
        for a, b in itertools.pairwise(samples)
        if b[0] > a[0] and min(a[2], b[2]) >= 0.9 * n
    ]
    analysing = [s[2] for s in samples[1:-1]]

    def pcts(values: list[float]) -> list[float | None]:
        return [_round(_pct(values, 50)), _round(_pct(values, 95)), _round(max(values, default=None))]

    return {
        "live_calls": n,
        "seconds": seconds,
        "calls_placed": len(plan),
        "listeners_analysing_mean_max": [
            round(float(np.mean(analysing)), 1) if analysing else None,
            max(analysing, default=None),
        ],
        "receiver_cpu_share_mean": round((c1 - c0) / (t1 - t0), 3),
        "receiver_cpu_share_busiest_second": round(max(per_second, default=0.0), 3),
        "receiver_cpu_share_while_90pct_analysing_mean_max_seconds": [
            round(float(np.mean(full)), 3) if full else None,
            round(max(full), 3) if full else None,
            len(full),
        ],
        "verdicts_came": f"{came}/{len(plan)}",
        "verdicts_equal_offline": f"{same}/{came}",
        "verdict_late_ms_p50_p95_max": pcts(verdict_late),
        "verdict_media_time_minus_offline_ms_p50_p95": [_round(_pct(media_shift, 50)), _round(_pct(media_shift, 95))],
        "greeting_ends_came": f"{ends_came}/{ends_expected}",
        "greeting_end_late_ms_p50_p95_max": pcts(end_late),
        "packets_sent_received": [sent, received],
        "packets_dropped": sent - received,
        "kernel_drops": kernel_drops,
        "stray_packets": stray,
        "receive_buffer_bytes": rcvbuf,
        "sender_late_packets_over_5ms": sum(x > 0.005 for x in late),
        "sender_late_ms_max": round(1000 * max(late, default=0.0), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300, help="calls per corpus (tuning and held-out)")
    parser.add_argument("--seed", type=int, default=1, help="the tuning corpus; held out is seed + 1000")
    parser.add_argument("--quick", action="store_true", help="60 calls, three voices, greetings of 5-9 s")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--mistakes", action="store_true", help="list telgate's wrong verdicts")
    parser.add_argument("--live", type=int, metavar="N", help="N concurrent calls' RTP into one receiving process")
    parser.add_argument("--live-seconds", type=float, default=30.0, help="how long the live run sends")
    parser.add_argument("--live-pool", type=int, default=60, help="distinct calls rendered for the live run")
    args = parser.parse_args()
    if args.live:
        figures = live(args.live, args.live_seconds, args.live_pool, args.seed)
        text = json.dumps(figures, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        return
    n = 60 if args.quick and args.calls == 300 else args.calls
    report: dict[str, Any] = {"calls_per_corpus": n, "seed": args.seed}
    for name, seed in (("tuning", args.seed), ("held_out", args.seed + 1000)):
        started = time.perf_counter()
        calls = corpus(n, seed, args.quick)
        rendered = time.perf_counter() - started
        report[name] = evaluate(calls)
        report[name]["render_s"] = round(rendered, 1)
        if args.mistakes:
            report[name]["telgate_mistakes"] = mistakes(calls)
        print(f"{name}: {json.dumps(report[name], indent=1)}", file=sys.stderr, flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
