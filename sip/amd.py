"""Answering-machine detection (AMD) on the audio a callee sends. Sans-IO, one `Amd` per call.

The shell decodes each RTP packet (sip/g711.py) and feeds the 20 ms frame with its start time in ms
(from the RTP timestamp, on the same time base as `answered_ms`); `Amd` answers with events. No clock, no
I/O: when audio stops arriving the shell calls `tick(now)` (at `deadline()`), and `finish(now)` when the
call ends.

Rules:
- Parameters are Asterisk app_amd's, by its amd.conf names and defaults (`AmdParams`):
  initial_silence 2,500 ms, greeting 1,500, after_greeting_silence 800, total_analysis_time 5,000,
  min_word_length 100, between_words_silence 50, maximum_word_length 5,000, silence_threshold 256 and
  maximum_number_of_words 2 -- the value in Asterisk's shipped amd.conf.sample (app_amd.c's own fallback,
  used only without an amd.conf, is 3). Beyond app_amd: `beep_wait_ms`, `end_silence_ms`,
  `max_listen_ms` (after a machine verdict) and `vad`.
- Each frame is one of: voice, silence or tone. A tone is a run of frames whose energy is concentrated
  around one frequency (sip/tones.py: beeps, ringback, CED); it is never voice. Voice is what webrtcvad
  (`vad="webrtc"`, mode `vad_mode`) calls speech *and* stands `noise_margin_db` above the noise floor
  (the quietest frame of the last 1.5 s), so steady noise is silence; `vad="energy"` is app_amd's own
  rule (mean absolute sample below `silence_threshold` is silence).
- The verdict follows app_amd's state machine on those frames: silence of `initial_silence` before any
  word -> machine_start (INITIALSILENCE); a word (`min_word_length` of voice) starts the greeting; then
  silence of `after_greeting_silence` -> human (HUMAN); voice adding up to `greeting` -> machine_start
  (LONGGREETING); one utterance of `maximum_word_length` -> MAXWORDLENGTH; `total_analysis_time`
  without a verdict -> unknown (TOOLONG). `maximum_number_of_words` words -> MAXWORDS only with
  `count_words` (off by default: measured on bench/amd, counting words takes people who say more than
  "hello" for machines).
- Before a verdict, CED (2,100 Hz) -> fax (cause CED); a beep -> machine_start (cause BEEP); a tone of
  `tone_ms` (ringback, network tones) turns the initial-silence rule off: the line is not dead, and
  without speech the verdict is unknown (TOOLONG).
- After machine_start, one `MachineEnd`: machine_end_beep when a beep ends (a steady single tone of
  400-2,000 Hz, at least 100 ms), machine_end_silence after `end_silence_ms` of silence past the
  greeting, machine_end_other when neither came within `beep_wait_ms` of the last speech or within
  `max_listen_ms` of the answer.
- Time: a frame older than or equal to the last one is ignored. Up to `hold_ms` of missing frames take
  the class of the frame before them (a lost packet inside a word is still the word); a longer gap is
  silence, as app_amd counts the frames it never got. A frame that is not 160 samples is cut or
  zero-padded to 160; an empty one is a lost one. Decision times are the end of the deciding frame;
  `AmdVerdict.ms` is counted from the answer.
- no packet at all by `initial_silence` -> unknown (NOAUDIODATA), not INITIALSILENCE: silence that arrives
  as RTP is a machine's dead air, no RTP is a media path we do not hear (a NAT), and a person must not be
  hung up on for it (app_amd answers NOTSURE when frames stop coming);
- `finish(now)`: no audio at all -> unknown (NOAUDIODATA); audio but no verdict -> unknown (HANGUP);
  a machine without its end -> machine_end_beep if a beep was still sounding, else machine_end_other.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import webrtcvad  # type: ignore[import-untyped]

from .tones import (
    FRAME_MS,
    BeepDetector,
    BeepEnded,
    CedDetector,
    Pcm,
    ToneFrame,
    as_frame,
    measure,
)

AnsweredBy = Literal[
    "human", "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax", "unknown"
]
Cause = Literal[
    # app_amd's AMDCAUSE values
    "INITIALSILENCE",
    "HUMAN",
    "LONGGREETING",
    "MAXWORDS",
    "MAXWORDLENGTH",
    "TOOLONG",
    "NOAUDIODATA",
    # telgate's: the fax answer tone, a beep before any verdict, the call ended before a verdict
    "CED",
    "BEEP",
    "HANGUP",
]
Vad = Literal["webrtc", "energy"]


BEEP_STOP_MS = 100  # no audio this long while a beep sounds: the beep ended with the last frame


@dataclass(frozen=True, slots=True)
class AmdParams:
    """app_amd's parameters (amd.conf names, ms) and telgate's additions; see the module's rules."""

    initial_silence: int = 2500
    greeting: int = 1500
    after_greeting_silence: int = 800
    total_analysis_time: int = 5000
    min_word_length: int = 100
    between_words_silence: int = 50
    maximum_number_of_words: int = 2
    maximum_word_length: int = 5000
    silence_threshold: int = 256
    # telgate's
    beep_wait_ms: int = 6000
    end_silence_ms: int = 2500
    max_listen_ms: int = 30000
    vad: Vad = "webrtc"
    vad_mode: int = 3
    noise_margin_db: float = 9.0
    count_words: bool = False
    tone_ms: int = 500
    hold_ms: int = 60


@dataclass(frozen=True, slots=True)
class AmdVerdict:
    answered_by: AnsweredBy  # human, machine_start, fax or unknown
    cause: Cause
    ms: int  # from the answer


@dataclass(frozen=True, slots=True)
class MachineEnd:
    answered_by: AnsweredBy  # machine_end_beep, machine_end_silence or machine_end_other
    t_ms: int  # when it was decided
    beep_end_ms: int | None = None  # the end of the beep, for machine_end_beep


AmdEvent = AmdVerdict | MachineEnd

_VOICE, _SILENCE, _TONE = 0, 1, 2
_FLOOR_FRAMES = 75  # 1.5 s
_MIN_VOICE_DB = 10 * np.log10(100.0**2)  # a frame quieter than RMS 100 (-50 dBFS) is never voice


@dataclass
class _Analysis:
    """app_amd's counters (ms)."""

    total: int = 0
    silence: int = 0
    voice: int = 0
    consecutive_voice: int = 0
    words: int = 0
    in_word: bool = True  # app_amd starts in STATE_IN_WORD
    in_greeting: bool = False
    tone: int = 0
    heard_tone: bool = False


@dataclass
class Amd:
    """One call's answering-machine detector."""

    params: AmdParams = field(default_factory=AmdParams)
    answered_ms: int = 0

    def __post_init__(self) -> None:
        self._vad = webrtcvad.Vad(self.params.vad_mode)
        self._beep = BeepDetector()
        self._ced = CedDetector()
        self._a = _Analysis()
        self._next = self.answered_ms  # start of the frame expected next
        self._fed = False
        self._last_class = _SILENCE
        self._floor: deque[tuple[int, float]] = deque()  # (frame index, energy dB): a monotonic minimum
        self._index = 0
        self._tone_run = 0
        self._tone_hz = 0.0
        self._tone_misses = 0
        self.verdict: AmdVerdict | None = None
        self.end: MachineEnd | None = None
        self._verdict_at = 0
        self._last_voice_end = 0
        self._silence_run = 0

    # -- the shell's calls -------------------------------------------------------------------------

    def feed(self, pcm16: bytes | Pcm, t_ms: int) -> list[AmdEvent]:
        """One received frame starting at `t_ms`; the events it decided."""
        if self.done or t_ms < self._next:
            return []
        frame = as_frame(pcm16)
        if frame.size == 0 or (isinstance(pcm16, bytes) and len(pcm16) < 2):
            return []
        events = self._gap(t_ms)
        if self.done:
            return events
        self._fed = True
        events += self._frame(frame, t_ms)
        self._next = t_ms + FRAME_MS
        return events

    def deadline(self) -> int | None:
        """When `tick` should be called if no audio arrives before then (None once done)."""
        if self.done:
            return None
        if self.verdict is None:
            a, p = self._a, self.params
            left = [p.total_analysis_time - a.total]
            if not a.in_greeting and not a.heard_tone:
                left.append(p.initial_silence - a.silence)
            if a.in_greeting:
                left.append(p.after_greeting_silence - a.silence)
            return self._next + max(FRAME_MS, min(left))
        if self._beep.in_beep:  # a far end that stops sending right after its beep: the beep ended
            return self._next + BEEP_STOP_MS
        return self._next + max(FRAME_MS, self.params.end_silence_ms - self._silence_run)

    def tick(self, now: int) -> list[AmdEvent]:
        """No audio since the last frame up to `now`: the missing time counts as lost frames — except a beep
        that was sounding when the audio stopped, which ended with its last frame (a machine that goes
        quiet, or stops sending, once it starts recording)."""
        if self.done or now <= self._next:
            return []
        if not self._fed and self.verdict is None:  # no packet at all: a media path we do not hear
            if now - self.answered_ms >= self.params.initial_silence:
                self.verdict = AmdVerdict("unknown", "NOAUDIODATA", now - self.answered_ms)
                self._next = max(self._next, now)
                return [self.verdict]
            return []
        if self._beep.in_beep and now - self._next >= BEEP_STOP_MS:
            ended = [e for e in self._beep.flush() if isinstance(e, BeepEnded)]
            if ended and self.verdict is not None and self.verdict.answered_by == "machine_start":
                self.end = MachineEnd("machine_end_beep", now, ended[0].end_ms)
                self._next = max(self._next, now)
                return [self.end]
        events = self._gap(now)
        self._next = max(self._next, now)
        return events

    def finish(self, now: int) -> list[AmdEvent]:
        """The call ended (or the shell gives up) at `now`."""
        events = self.tick(now)
        ms = max(now, self._next) - self.answered_ms
        if self.verdict is None:
            self.verdict = AmdVerdict("unknown", "HANGUP" if self._fed else "NOAUDIODATA", ms)
            events.append(self.verdict)
        elif self.verdict.answered_by == "machine_start" and self.end is None:
            ended = [e for e in self._beep.flush() if isinstance(e, BeepEnded)]
            if ended:
                self.end = MachineEnd("machine_end_beep", max(now, self._next), ended[0].end_ms)
            else:
                self.end = MachineEnd("machine_end_other", max(now, self._next))
            events.append(self.end)
        return events

    @property
    def done(self) -> bool:
        v = self.verdict
        return v is not None and (v.answered_by != "machine_start" or self.end is not None)

    # -- inside ------------------------------------------------------------------------------------

    def _gap(self, t_ms: int) -> list[AmdEvent]:
        """Frames missing between the expected one and `t_ms`."""
        missing = t_ms - self._next
        if missing <= 0:
            return []
        events: list[AmdEvent] = []
        held = self._last_class if missing <= self.params.hold_ms else _SILENCE
        t = self._next
        while missing > 0 and not self.done:  # bounded: a verdict and the machine's end come in max_listen_ms
            step = min(FRAME_MS, missing)
            events += self._step(held, t, step)
            t += step
            missing -= step
        self._next = t_ms
        return events

    def _classify(self, frame: Pcm, tone: ToneFrame) -> int:
        p = self.params
        # a tone: purity 0.9 around one frequency (within 40 Hz, ringback's beats included) for 3 frames
        # (speech's best frames reach 0.89 on one harmonic: an "oo"); once established it goes on at purity
        # 0.5, and two frames that fail (noise in a beat's trough, a lost packet's neighbour) are still it
        near = abs(tone.peak_hz - self._tone_hz) <= 40
        if near and tone.purity >= (0.5 if self._tone_run >= 3 else 0.9):
            self._tone_run += 1
            self._tone_misses = 0
            self._tone_hz = tone.peak_hz if self._tone_run < 3 else self._tone_hz
        elif self._tone_run >= 3 and self._tone_misses < 2:
            self._tone_misses += 1
        else:
            self._tone_run = 1 if tone.purity >= 0.9 else 0
            self._tone_misses = 0
            self._tone_hz = tone.peak_hz
        if self._tone_run >= 3 or self._beep.in_beep:
            return _TONE
        if p.vad == "energy":
            mean_abs = float(np.abs(frame.astype(np.int32)).mean())
            return _SILENCE if mean_abs < p.silence_threshold else _VOICE
        db = 10 * np.log10(tone.energy + 1.0)
        floor = self._floor
        while floor and floor[-1][1] >= db:
            floor.pop()
        floor.append((self._index, db))
        while floor[0][0] <= self._index - _FLOOR_FRAMES:
            floor.popleft()
        self._index += 1
        if db < _MIN_VOICE_DB or db < floor[0][1] + p.noise_margin_db:
            return _SILENCE
        return _VOICE if self._vad.is_speech(frame.tobytes(), 8000) else _SILENCE

    def _frame(self, frame: Pcm, t_ms: int) -> list[AmdEvent]:
        tone = measure(frame)
        end = t_ms + FRAME_MS
        beeps = self._beep.feed(tone, t_ms)
        events: list[AmdEvent] = []
        if self.verdict is None:
            if self._ced.feed(tone, t_ms) is not None:
                return [self._decide("fax", "CED", end)]
            if beeps:
                events.append(self._decide("machine_start", "BEEP", end))
        kind = self._classify(frame, tone)
        for b in beeps:
            if isinstance(b, BeepEnded) and self.verdict is not None and self.end is None:
                self.end = MachineEnd("machine_end_beep", end, b.end_ms)
                return [*events, self.end]
        if self.verdict is None or not self.done:
            events += self._step(kind, t_ms, FRAME_MS)
        self._last_class = kind
        return events

    def _decide(self, answered_by: AnsweredBy, cause: Cause, t_end: int) -> AmdVerdict:
        self.verdict = AmdVerdict(answered_by, cause, t_end - self.answered_ms)
        self._verdict_at = t_end
        self._last_voice_end = max(self._last_voice_end, t_end)
        return self.verdict

    def _step(self, kind: int, t_ms: int, ms: int) -> list[AmdEvent]:
        """`ms` of one class starting at `t_ms`: app_amd's rules before the verdict, the end after."""
        end = t_ms + ms
        if self.verdict is not None:
            return self._listen(kind, end, ms)
        p, a = self.params, self._a
        a.total += ms
        if a.total >= p.total_analysis_time:
            return [self._decide("unknown", "TOOLONG", end)]
        if kind == _TONE:
            a.tone += ms
            a.heard_tone = a.heard_tone or a.tone >= p.tone_ms
            a.silence = 0
            return []
        a.tone = 0
        if kind == _SILENCE:
            a.silence += ms
            if a.silence >= p.between_words_silence:
                a.in_word = False
                a.consecutive_voice = 0
            if not a.in_greeting and not a.heard_tone and a.silence >= p.initial_silence:
                return [self._decide("machine_start", "INITIALSILENCE", end)]
            if a.in_greeting and a.silence >= p.after_greeting_silence:
                return [self._decide("human", "HUMAN", end)]
            return []
        a.consecutive_voice += ms
        a.voice += ms
        self._last_voice_end = end
        if a.consecutive_voice >= p.min_word_length and not a.in_word:
            a.words += 1
            a.in_word = True
        if a.consecutive_voice >= p.maximum_word_length:
            return [self._decide("machine_start", "MAXWORDLENGTH", end)]
        if p.count_words and a.words >= p.maximum_number_of_words:
            return [self._decide("machine_start", "MAXWORDS", end)]
        if a.in_greeting and a.voice >= p.greeting:
            return [self._decide("machine_start", "LONGGREETING", end)]
        a.silence = 0
        if a.consecutive_voice >= p.min_word_length:
            a.in_greeting = True
        return []

    def _listen(self, kind: int, end: int, ms: int) -> list[AmdEvent]:
        """After machine_start: wait for the beep, the silence after the greeting, or give up."""
        p = self.params
        if kind == _VOICE:
            self._last_voice_end = end
            self._silence_run = 0
        elif kind == _SILENCE:
            self._silence_run += ms
        else:
            self._silence_run = 0
        if self._silence_run >= p.end_silence_ms:
            self.end = MachineEnd("machine_end_silence", end)
        elif end - self._last_voice_end >= p.beep_wait_ms or end - self.answered_ms >= p.max_listen_ms:
            self.end = MachineEnd("machine_end_other", end)
        return [self.end] if self.end is not None else []
