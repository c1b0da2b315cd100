"""Tone detectors on received audio: answering-machine beeps, the fax answer tone (CED) and in-band DTMF.

Sans-IO: each detector is fed 20 ms frames of 8 kHz 16-bit linear PCM (160 samples, numpy int16) with the
frame's start time in ms, and answers with events; none reads a clock or does I/O.

Rules:
- One measurement per frame (`measure`): a Hann-windowed FFT zero-padded to 512 points gives the
  strongest frequency between 300 and 3,400 Hz, its *purity* (the share of the frame's energy within
  ±110 Hz of it) and whether the envelope is *steady* (the RMS of the frame's four 5 ms quarters
  differs by less than `STEADY_RATIO`). A dual tone whose components fall in one band beats (ringback's
  440 + 480 Hz beats at 40 Hz), so it is pure but not steady; speech is neither.
- A beep (`BeepDetector`) is a steady single tone between 400 and 2,000 Hz (the range FreeSWITCH's
  mod_avmd listens in) whose frequency stays within 2 % (at least 15 Hz) for at least `min_ms`
  (100 ms). It is reported when it has lasted that long (`BeepStarted`) and when it stops
  (`BeepEnded`, with the end of its last tonal frame).
- CED (`CedDetector`, ITU-T T.30 / V.25: 2,100 Hz ± 15 Hz, also amplitude-modulated as V.8 ANSam)
  is 2,100 Hz ± 25 Hz at purity 0.6 for 400 ms; steadiness is not required (ANSam's 15 Hz
  modulation and phase reversals every 450 ms). Reported once.
- DTMF (`DtmfDetector`): the energies at the 8 ITU-T Q.23 frequencies (a single-bin DFT each over
  the frame). A frame holds a digit when the strongest row and column tone each stand 8 dB above the
  other tones of their group, twist is within 8 dB (column louder) / 4 dB (row louder), the pair
  carries at least 60 % of the frame's energy and the level is above about -36 dBm0. A digit is
  reported once per press, at its second consecutive frame (40 ms, Q.24's shortest tone), with the start
  of its first frame; it may repeat only after two frames (40 ms) without it.
- Lost packets: one missing frame (a 40 ms step in t_ms) continues a beep, a CED or a digit; a longer gap
  ends it. Frames older than the last one are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 8000
FRAME = 160  # samples in 20 ms
FRAME_MS = 20
Pcm = npt.NDArray[np.int16]

_NFFT = 512
_HZ_PER_BIN = SAMPLE_RATE / _NFFT
_WINDOW = np.hanning(FRAME)
_LO_BIN = int(300 / _HZ_PER_BIN)
_HI_BIN = int(3400 / _HZ_PER_BIN)
_BAND_BINS = 7  # ±109 Hz: the Hann main lobe of a 160-sample frame is ±100 Hz
MIN_TONE_ENERGY = 40.0**2  # mean square; below it (about -58 dBFS) a frame holds no tone
STEADY_RATIO = 1.3


@dataclass(frozen=True, slots=True)
class ToneFrame:
    """One frame's single-tone measurements."""

    energy: float  # mean square of the samples
    peak_hz: float  # strongest frequency in 300-3,400 Hz (0 if the frame is too quiet)
    purity: float  # share of the frame's energy within ±110 Hz of the peak
    steady: bool  # no beating: the four quarters' RMS within STEADY_RATIO


_QUIET = ToneFrame(0.0, 0.0, 0.0, False)


def as_frame(samples: Pcm | bytes) -> Pcm:
    """Exactly 160 int16 samples: little-endian bytes or an array, cut or zero-padded to 20 ms."""
    pcm = np.frombuffer(samples[: len(samples) // 2 * 2], dtype="<i2") if isinstance(samples, bytes) else samples
    if pcm.shape != (FRAME,):
        pcm = np.ravel(pcm)[:FRAME]
        if pcm.size < FRAME:
            pcm = np.concatenate([pcm.astype(np.int16), np.zeros(FRAME - pcm.size, dtype=np.int16)])
    return pcm.astype(np.int16, copy=False)


def measure(frame: Pcm) -> ToneFrame:
    """The single-tone measurements of one 160-sample frame (see the module's rules)."""
    x = frame.astype(np.float64)
    energy = float(np.dot(x, x)) / FRAME
    if energy < MIN_TONE_ENERGY:
        return ToneFrame(energy, 0.0, 0.0, False) if energy else _QUIET
    power = np.abs(np.fft.rfft(x * _WINDOW, _NFFT)) ** 2
    band = power[_LO_BIN:_HI_BIN]
    k = int(np.argmax(band)) + _LO_BIN
    a, b, c = power[k - 1], power[k], power[k + 1]
    denom = a - 2 * b + c
    offset = 0.5 * (a - c) / denom if denom else 0.0
    total = float(power.sum())
    purity = float(power[k - _BAND_BINS : k + _BAND_BINS + 1].sum()) / total if total else 0.0
    quarters = np.sqrt(np.einsum("ij,ij->i", q := x.reshape(4, 40), q))
    steady = bool(quarters.min() * STEADY_RATIO >= quarters.max())
    return ToneFrame(energy, (k + offset) * _HZ_PER_BIN, purity, steady)


@dataclass(frozen=True, slots=True)
class BeepStarted:
    hz: float
    start_ms: int


@dataclass(frozen=True, slots=True)
class BeepEnded:
    hz: float
    start_ms: int
    end_ms: int


BeepEvent = BeepStarted | BeepEnded


class BeepDetector:
    """A steady single tone of 400-2,000 Hz lasting at least `min_ms` (see the module's rules)."""

    def __init__(
        self, *, min_ms: int = 100, low_hz: float = 400.0, high_hz: float = 2000.0, min_purity: float = 0.8
    ) -> None:
        self.min_ms = min_ms
        self.low_hz = low_hz
        self.high_hz = high_hz
        self.min_purity = min_purity
        self._start: int | None = None  # start of the current run of tonal frames
        self._last = -(10**12)  # start of the last tonal frame of the run
        self._seen = -(10**12)  # start of the last frame fed
        self._hz = 0.0
        self._started = False

    @property
    def in_beep(self) -> bool:
        return self._started

    def feed(self, frame: Pcm | ToneFrame, t_ms: int) -> list[BeepEvent]:
        if t_ms <= self._seen:
            return []
        tone = frame if isinstance(frame, ToneFrame) else measure(frame)
        events: list[BeepEvent] = []
        if self._start is not None and t_ms - self._last > 2 * FRAME_MS:
            events += self._end()
        self._seen = t_ms
        tonal = tone.steady and tone.purity >= self.min_purity and self.low_hz <= tone.peak_hz <= self.high_hz
        if tonal and self._start is not None and abs(tone.peak_hz - self._hz) <= max(15.0, 0.02 * self._hz):
            self._last = t_ms
            n = (t_ms - self._start) // FRAME_MS
            self._hz += (tone.peak_hz - self._hz) / (n + 1)
        else:
            if self._start is not None:
                events += self._end()
            if tonal:
                self._start, self._last, self._hz = t_ms, t_ms, tone.peak_hz
        if self._start is not None and not self._started and self._last + FRAME_MS - self._start >= self.min_ms:
            self._started = True
            events.append(BeepStarted(round(float(self._hz), 1), self._start))
        return events

    def flush(self) -> list[BeepEvent]:
        """The stream ended: a beep still sounding ends with its last frame."""
        return self._end() if self._start is not None else []

    def _end(self) -> list[BeepEvent]:
        assert self._start is not None
        out: list[BeepEvent] = []
        if self._started:
            out.append(BeepEnded(round(float(self._hz), 1), self._start, self._last + FRAME_MS))
        self._start, self._started = None, False
        return out


@dataclass(frozen=True, slots=True)
class CedDetected:
    start_ms: int
    t_ms: int  # end of the frame at which it was recognised


class CedDetector:
    """The fax answer tone, 2,100 Hz, for at least `min_ms` (see the module's rules)."""

    def __init__(self, *, min_ms: int = 400, hz: float = 2100.0, tolerance_hz: float = 25.0) -> None:
        self.min_ms = min_ms
        self.hz = hz
        self.tolerance_hz = tolerance_hz
        self._start: int | None = None
        self._last = -(10**12)
        self._seen = -(10**12)
        self.detected: CedDetected | None = None

    def feed(self, frame: Pcm | ToneFrame, t_ms: int) -> CedDetected | None:
        if self.detected is not None or t_ms <= self._seen:
            return None
        self._seen = t_ms
        tone = frame if isinstance(frame, ToneFrame) else measure(frame)
        hit = tone.purity >= 0.6 and abs(tone.peak_hz - self.hz) <= self.tolerance_hz
        if not hit:
            if t_ms - self._last > 2 * FRAME_MS:  # one odd frame (a phase reversal) is forgiven
                self._start = None
            return None
        if self._start is None or t_ms - self._last > 3 * FRAME_MS:
            self._start = t_ms
        self._last = t_ms
        if t_ms + FRAME_MS - self._start >= self.min_ms:
            self.detected = CedDetected(self._start, t_ms + FRAME_MS)
            return self.detected
        return None


DTMF_ROWS = (697.0, 770.0, 852.0, 941.0)
DTMF_COLS = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")
_N = np.arange(FRAME)
_DFT = np.exp(-2j * np.pi * np.outer(_N, DTMF_ROWS + DTMF_COLS) / SAMPLE_RATE)
_RELATIVE_PEAK = 10 ** (8 / 10)
_NORMAL_TWIST = 10 ** (8 / 10)  # the column (high) tone may be this much louder than the row tone
_REVERSE_TWIST = 10 ** (4 / 10)  # the row (low) tone may be this much louder than the column tone
_MIN_TONE_POWER = 100.0**2 / 2  # a sinusoid of amplitude 100 (about -50 dBFS, -36 dBm0 in G.711)


@dataclass(frozen=True, slots=True)
class DtmfDigit:
    digit: str
    start_ms: int


def dtmf_key(frame: Pcm) -> str | None:
    """The DTMF key one 20 ms frame holds, if it passes every check of the module's rules."""
    x = frame.astype(np.float64)
    energy = float(np.dot(x, x))
    if energy < 2 * _MIN_TONE_POWER * FRAME:
        return None
    power = np.abs(x @ _DFT) ** 2 * (2 / FRAME)  # a tone of amplitude A gives A^2 N / 2: its energy
    rows, cols = power[:4], power[4:]
    r, c = int(np.argmax(rows)), int(np.argmax(cols))
    row, col = float(rows[r]), float(cols[c])
    if row < _MIN_TONE_POWER * FRAME or col < _MIN_TONE_POWER * FRAME:
        return None
    if col > row * _NORMAL_TWIST or row > col * _REVERSE_TWIST:
        return None
    if any(rows[i] * _RELATIVE_PEAK > row for i in range(4) if i != r):
        return None
    if any(cols[i] * _RELATIVE_PEAK > col for i in range(4) if i != c):
        return None
    if row + col < 0.6 * energy:
        return None
    return DTMF_KEYS[r][c]


class DtmfDetector:
    """In-band DTMF: each press reported once, with the start of its first frame (module rules)."""

    def __init__(self) -> None:
        self._candidate: str | None = None
        self._candidate_start = 0
        self._current: str | None = None  # the digit reported and still held
        self._misses = 0
        self._seen = -(10**12)

    def feed(self, frame: Pcm, t_ms: int) -> list[DtmfDigit]:
        if t_ms <= self._seen:
            return []
        gap = t_ms - self._seen
        self._seen = t_ms
        if gap > 2 * FRAME_MS:
            self._candidate, self._current, self._misses = None, None, 0
        key = dtmf_key(frame)
        if key is None:
            self._candidate = None
            self._misses += 1
            if self._misses >= 2:
                self._current = None
            return []
        self._misses = 0
        if key == self._current:
            return []
        if key != self._candidate:
            self._candidate, self._candidate_start = key, t_ms
            return []
        self._current, self._candidate = key, None
        return [DtmfDigit(key, self._candidate_start)]
