"""Asterisk app_amd's algorithm (apps/app_amd.c, isAnsweringMachine) as bench/amd's reference.

Not product code: it exists so that telgate's sip/amd.Amd is measured against what a PBX does, on the
same frames in the same run. It follows app_amd step for step with amd.conf's shipped defaults
(sip.amd.AmdParams; maximum_number_of_words 2, as in amd.conf.sample):
- Silence is Asterisk's ast_dsp_silence: a frame whose mean absolute sample is below silence_threshold
  (256) is silent, and the silence run is the sum of consecutive silent frames; any other frame is voice.
- Time is the sum of the frames received (app_amd adds each voice frame's length): a lost packet adds
  nothing. Each 100 ms (twice the smallest parameter: app_amd's ast_waitfor timeout) without a frame is
  one AST_FRAME_NULL, counted as 100 ms of time and of silence.
- The rules in app_amd's order: TOOLONG, then on silence (word end at between_words_silence,
  INITIALSILENCE, HUMAN), on voice (word count, MAXWORDLENGTH, MAXWORDS, LONGGREETING, greeting start).
- app_amd knows no beep and no fax: it gives one verdict, never a MachineEnd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sip.amd import AmdEvent, AmdParams, AmdVerdict, AnsweredBy, Cause
from sip.tones import FRAME_MS, Pcm, as_frame


@dataclass
class AppAmdBaseline:
    params: AmdParams = field(default_factory=AmdParams)
    answered_ms: int = 0
    verdict: AmdVerdict | None = None

    def __post_init__(self) -> None:
        p = self.params
        self._max_wait = min(
            50,
            p.initial_silence,
            p.greeting,
            p.after_greeting_silence,
            p.total_analysis_time,
            p.min_word_length,
            p.between_words_silence,
        )
        self._last: int | None = None
        self.in_initial_silence = True
        self.in_greeting = False
        self.voice = 0
        self.silence = 0
        self.total = 0
        self.words = 0
        self.in_word = True  # STATE_IN_WORD
        self.consecutive_voice = 0
        self.dsp_silence = 0

    def _decide(self, answered_by: AnsweredBy, cause: Cause, t_end: int) -> list[AmdEvent]:
        self.verdict = AmdVerdict(answered_by, cause, t_end - self.answered_ms)
        return [self.verdict]

    def feed(self, pcm16: bytes | Pcm, t_ms: int) -> list[AmdEvent]:
        if self.verdict is not None or (self._last is not None and t_ms <= self._last):
            return []
        previous = self.answered_ms - FRAME_MS if self._last is None else self._last
        events = self._null_frames(previous + FRAME_MS, t_ms)
        if events:
            return events
        self._last = t_ms
        silent = float(np.abs(as_frame(pcm16).astype(np.int32)).mean()) < self.params.silence_threshold
        return self._frame(silent, FRAME_MS, t_ms + FRAME_MS)

    def _null_frames(self, start: int, until: int) -> list[AmdEvent]:
        wait = 2 * self._max_wait
        t = start
        while until - t >= wait:
            t += wait
            if events := self._frame(True, wait, t):
                return events
        return []

    def _frame(self, silent: bool, length: int, end: int) -> list[AmdEvent]:
        p = self.params
        self.total += length
        if self.total >= p.total_analysis_time:
            return self._decide("unknown", "TOOLONG", end)
        if silent:
            self.dsp_silence += length
            self.silence = self.dsp_silence
            if self.silence >= p.between_words_silence:
                self.in_word = False
                self.consecutive_voice = 0
            if self.in_initial_silence and self.silence >= p.initial_silence:
                return self._decide("machine_start", "INITIALSILENCE", end)
            if self.silence >= p.after_greeting_silence and self.in_greeting:
                return self._decide("human", "HUMAN", end)
            return []
        self.dsp_silence = 0
        self.consecutive_voice += length
        self.voice += length
        if self.consecutive_voice >= p.min_word_length and not self.in_word:
            self.words += 1
            self.in_word = True
        if self.consecutive_voice >= p.maximum_word_length:
            return self._decide("machine_start", "MAXWORDLENGTH", end)
        if self.words >= p.maximum_number_of_words:
            return self._decide("machine_start", "MAXWORDS", end)
        if self.in_greeting and self.voice >= p.greeting:
            return self._decide("machine_start", "LONGGREETING", end)
        if self.voice >= p.min_word_length:
            self.silence = 0
        if self.consecutive_voice >= p.min_word_length and not self.in_greeting:
            self.in_initial_silence = False
            self.in_greeting = True
        return []

    def finish(self, now: int) -> list[AmdEvent]:
        if self.verdict is not None:
            return []
        start = self.answered_ms if self._last is None else self._last + FRAME_MS
        if events := self._null_frames(start, now):
            return events
        return self._decide("unknown", "HANGUP" if self._last is not None else "NOAUDIODATA", now)
