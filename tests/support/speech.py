"""Test audio rendered in memory as 8 kHz mono int16: espeak-ng speech, tones, silence, noise, packet loss
and a G.711 round trip. Deterministic: every random choice takes a seed.

Speech is rendered by `espeak-ng -w` into a temporary directory and resampled there by sox; nothing is
written into the repository. espeak-ng and sox are installed by .ci/run: a missing one fails, it is not
skipped. Levels are RMS in dBFS: 20 * log10(rms / 32768).
"""

from __future__ import annotations

import subprocess
import tempfile
import wave
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sip import g711, rtp

RATE = 8000
FRAME = 160
FRAME_MS = 20
Pcm = npt.NDArray[np.int16]


def _ms(ms: float) -> int:
    return round(ms * RATE / 1000)


def _to_pcm(x: npt.NDArray[np.float64]) -> Pcm:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def rms(x: Pcm) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0


def active_rms(x: Pcm) -> float:
    """RMS over the 20 ms frames that are not near silence (within 40 dB of the loudest frame)."""
    n = x.size // FRAME * FRAME
    if n == 0:
        return rms(x)
    e = np.mean(x[:n].astype(np.float64).reshape(-1, FRAME) ** 2, axis=1)
    keep = e > e.max() * 1e-4
    return float(np.sqrt(e[keep].mean())) if keep.any() else 0.0


def at_level(x: Pcm, dbfs: float) -> Pcm:
    """`x` scaled so that its active RMS is `dbfs`."""
    level = active_rms(x)
    if level == 0:
        return x.copy()
    return _to_pcm(x.astype(np.float64) * (32768 * 10 ** (dbfs / 20) / level))


@lru_cache(maxsize=512)
def _speak(text: str, voice: str, rate: int, pitch: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="telgate-speech-") as tmp:
        raw, out = Path(tmp) / "raw.wav", Path(tmp) / "out.wav"
        subprocess.run(
            ["espeak-ng", "-w", str(raw), "-v", voice, "-s", str(rate), "-p", str(pitch), text],
            check=True,
            capture_output=True,
        )
        subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)], check=True)
        with wave.open(str(out), "rb") as w:
            return w.readframes(w.getnframes())


def speak(text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50, *, trim: bool = True) -> Pcm:
    """`text` spoken by espeak-ng (`voice`, words per minute, pitch 0-99), at 8 kHz; with `trim` the
    leading and trailing silence espeak adds is cut (to the first/last frame within 40 dB of the peak)."""
    pcm = np.frombuffer(_speak(text, voice, rate, pitch), dtype="<i2").copy()
    if not trim or pcm.size == 0:
        return pcm
    n = pcm.size // FRAME
    e = np.mean(pcm[: n * FRAME].astype(np.float64).reshape(-1, FRAME) ** 2, axis=1)
    loud = np.flatnonzero(e > e.max() * 1e-4)
    if loud.size == 0:
        return pcm
    return pcm[loud[0] * FRAME : (loud[-1] + 1) * FRAME]


def silence(ms: float) -> Pcm:
    return np.zeros(_ms(ms), dtype=np.int16)


def tone(freqs_hz: float | Sequence[float], ms: float, dbfs: float = -12.0, phase: float = 0.0) -> Pcm:
    """The sum of sines at `freqs_hz` (equal amplitudes), `ms` long, at `dbfs` RMS overall."""
    freqs = [freqs_hz] if isinstance(freqs_hz, int | float) else list(freqs_hz)
    t = np.arange(_ms(ms)) / RATE
    x = sum((np.sin(2 * np.pi * f * t + phase) for f in freqs), np.zeros_like(t))
    level = np.sqrt(len(freqs) / 2)  # RMS of the sum of equal unit sines
    return _to_pcm(x * (32768 * 10 ** (dbfs / 20) / level))


def beep(hz: float, ms: float = 500, dbfs: float = -12.0) -> Pcm:
    """A voicemail beep: a single tone with 5 ms raised-cosine ramps."""
    x = tone(hz, ms, dbfs).astype(np.float64)
    ramp = min(_ms(5), x.size // 2)
    if ramp:
        w = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        x[:ramp] *= w
        x[x.size - ramp :] *= w[::-1]
    return _to_pcm(x)


def ringback(ms: float, dbfs: float = -16.0, on_ms: float = 2000, off_ms: float = 4000) -> Pcm:
    """North American ringback: 440 + 480 Hz, 2 s on, 4 s off, for `ms` in total."""
    period = np.concatenate([tone((440, 480), on_ms, dbfs), silence(off_ms)])
    reps = int(np.ceil(_ms(ms) / period.size))
    return np.tile(period, reps)[: _ms(ms)]


def ced(ms: float = 3000, dbfs: float = -12.0, ansam: bool = False) -> Pcm:
    """The fax answer tone: 2,100 Hz; with `ansam` amplitude-modulated at 15 Hz (20 %) with phase
    reversals every 450 ms (V.8 ANSam)."""
    t = np.arange(_ms(ms)) / RATE
    phase = np.pi * (np.floor(t / 0.45) % 2) if ansam else 0.0
    x = np.sin(2 * np.pi * 2100 * t + phase) * ((1 + 0.2 * np.sin(2 * np.pi * 15 * t)) if ansam else 1.0)
    return _to_pcm(x * (32768 * 10 ** (dbfs / 20) * np.sqrt(2)))


def dtmf(digits: str, tone_ms: float = 80, gap_ms: float = 80, dbfs: float = -10.0) -> Pcm:
    """DTMF key presses, each `tone_ms` of its row + column pair followed by `gap_ms` of silence."""
    rows, cols = (697, 770, 852, 941), (1209, 1336, 1477, 1633)
    keys = ("123A", "456B", "789C", "*0#D")
    parts = []
    for d in digits:
        r = next(i for i, k in enumerate(keys) if d in k)
        parts += [tone((rows[r], cols[keys[r].index(d)]), tone_ms, dbfs), silence(gap_ms)]
    return concat(*parts)


def concat(*parts: Pcm) -> Pcm:
    return np.concatenate([np.asarray(p, dtype=np.int16) for p in parts]) if parts else silence(0)


def white_noise(ms: float, dbfs: float, seed: int) -> Pcm:
    rng = np.random.default_rng(seed)
    return _to_pcm(rng.standard_normal(_ms(ms)) * 32768 * 10 ** (dbfs / 20))


def pink_noise(ms: float, dbfs: float, seed: int) -> Pcm:
    """1/f noise from 100 Hz up (a telephone channel carries nothing much lower), shaped in the frequency
    domain, at `dbfs` RMS."""
    n = _ms(ms)
    if n == 0:
        return silence(0)
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[f >= 100] /= np.sqrt(f[f >= 100])
    spectrum[f < 100] = 0
    x = np.fft.irfft(spectrum, n)
    x *= 32768 * 10 ** (dbfs / 20) / (np.sqrt(np.mean(x**2)) or 1.0)
    return _to_pcm(x)


def add_noise(x: Pcm, snr_db: float, seed: int, kind: str = "white") -> Pcm:
    """`x` plus white or pink noise `snr_db` below its active RMS (noise over the whole length)."""
    level = active_rms(x)
    if level == 0:
        level = 32768 * 10 ** (-20 / 20)  # silence: noise as if the signal were at -20 dBFS
    dbfs = 20 * np.log10(level / 32768) - snr_db
    noise = (white_noise if kind == "white" else pink_noise)(x.size * 1000 / RATE, float(dbfs), seed)
    return _to_pcm(x.astype(np.float64) + noise[: x.size])


def frames(x: Pcm) -> list[Pcm]:
    """`x` cut into 20 ms frames, the last padded with silence."""
    n = -(-x.size // FRAME)
    padded = np.concatenate([x, np.zeros(n * FRAME - x.size, dtype=np.int16)])
    return list(padded.reshape(n, FRAME)) if n else []


def packets(x: Pcm, loss: float = 0.0, seed: int = 0, start_ms: int = 0) -> list[tuple[int, Pcm]]:
    """(t_ms, frame) for every 20 ms frame of `x`, each dropped with probability `loss` (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, f in enumerate(frames(x)):
        if loss and rng.random() < loss:
            continue
        out.append((start_ms + i * FRAME_MS, f))
    return out


def g711_round_trip(x: Pcm, payload_type: int) -> Pcm:
    """`x` encoded with sip/rtp.encode (PCMU 0 or PCMA 8) and decoded with sip/g711."""
    return g711.decode(rtp.encode(x.astype("<i2").tobytes(), payload_type), payload_type)


def write_wav(path: Path, x: Pcm) -> Path:
    """`x` as an 8 kHz mono 16-bit WAV (what sip.prompts_dir, PJSIP's player and baresip's aufile take)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(x.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> Pcm:
    """An 8 kHz mono 16-bit WAV (a callee's recording) as samples."""
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
