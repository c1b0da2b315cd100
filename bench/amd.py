"""Answering-machine detection benchmark: telgate's sip.amd.Amd beside Asterisk app_amd's algorithm.

    python -m bench.amd [--calls 300] [--seed 1] [--quick] [--json PATH]

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
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.amd_baseline import AppAmdBaseline
from sip.amd import Amd, AmdEvent, AmdParams, AmdVerdict, MachineEnd
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300, help="calls per corpus (tuning and held-out)")
    parser.add_argument("--seed", type=int, default=1, help="the tuning corpus; held out is seed + 1000")
    parser.add_argument("--quick", action="store_true", help="60 calls, three voices, greetings of 5-9 s")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--mistakes", action="store_true", help="list telgate's wrong verdicts")
    args = parser.parse_args()
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
