"""What one answered call sends us, listened to: answering-machine detection and digit gathering. Sans-IO.

The shell hands every RTP packet of the call (with its arrival time) and every key an INFO carried; the
core answers with what it heard: AMD's verdict, a machine's greeting end, a gather's result. It reads no
clock: `deadline()` says when to call `tick(now)` if nothing arrives. Times are the loop's (seconds); the
call's own timeline (ms from the answer) is sip/rtp_in.py's.

Rules:
- Media: sip/rtp_in.py orders and decodes the packets. Decoded audio is cut into 20 ms frames (a far end
  with another ptime: each 20 ms of it a frame, the rest zero-padded) and goes to the AMD while it
  listens and to the in-band DTMF detector while a gather runs. Packets the receiver holds for reordering
  are released `FLUSH_S` after the last packet when no newer one came (a far end that stopped sending).
- AMD (sip/amd.py) starts with `listen_amd`: its verdict is heard once; with `until_end` a
  `machine_start` verdict keeps it listening for the greeting's end (beep, silence, or neither), heard
  once too; otherwise it stops at the verdict. When audio stops, its `tick` runs `AMD_LAG_S` behind the
  clock, so that frames still held for reordering are not counted as lost.
- Digits come from three sources: RFC 4733 telephone-events (each press once, sip/dtmf.py), SIP INFO
  (`info`) and in-band tones (sip/tones.py's detector). Only a running gather takes them. The same
  press told by two sources counts once: a digit from one source equal to a digit another source gave
  within `SAME_PRESS_MS` (on the call's timeline) that this source has not yet matched is that press.
- A gather (sip/dtmf.py's `Gather`, Twilio's rules) starts with `gather`; its timeouts run on `now`; its
  result is heard once with the source of its first digit (`via`: rfc4733, info, inband; None without
  digits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .amd import Amd, AmdParams, AmdVerdict, MachineEnd
from .dtmf import DtmfError, Gather, GatherResult, TelephoneEventReceiver
from .rtp_in import AudioFrame, EventPayload, RtpReceiver
from .tones import FRAME, FRAME_MS, DtmfDetector, Pcm, as_frame

Via = Literal["rfc4733", "info", "inband"]
FLUSH_S = 0.1
AMD_LAG_S = 0.2
SAME_PRESS_MS = 500


@dataclass(frozen=True, slots=True)
class Verdict:
    verdict: AmdVerdict


@dataclass(frozen=True, slots=True)
class GreetingEnded:
    end: MachineEnd
    verdict: AmdVerdict


@dataclass(frozen=True, slots=True)
class Pressed:
    """A key counted into the running gather."""

    digit: str
    via: Via


@dataclass(frozen=True, slots=True)
class Gathered:
    result: GatherResult
    via: Via | None


Heard = Verdict | GreetingEnded | Pressed | Gathered


@dataclass
class _Press:
    digit: str
    t_ms: int
    via: Via
    matched: set[str] = field(default_factory=set)  # the other sources that told this press too


@dataclass
class CallListener:
    """One answered call's ears (see the module's rules)."""

    answered_at: float
    event_payload_type: int = 101

    def __post_init__(self) -> None:
        self.receiver = RtpReceiver(self.answered_at, self.event_payload_type)
        self.amd: Amd | None = None
        self.until_end = False
        self.verdict: AmdVerdict | None = None
        self._gather: Gather | None = None
        self._first_via: Via | None = None
        self._events = TelephoneEventReceiver()
        self._inband = DtmfDetector()
        self._presses: list[_Press] = []
        self._flush_at: float | None = None

    # -- the shell's calls -------------------------------------------------------------------------
    def listen_amd(self, params: AmdParams, until_end: bool) -> None:
        if self.amd is None:
            self.amd = Amd(params)
            self.until_end = until_end

    def gather(self, gather: Gather, now: float) -> None:
        if self._gather is None:
            self._gather = gather
            gather.start(now)

    @property
    def active(self) -> bool:
        """Anything still listening: AMD before its last event, or a gather before its result."""
        return self.amd is not None or self._gather is not None

    @property
    def gathering(self) -> bool:
        return self._gather is not None

    def stop(self) -> None:
        """Listen no more (the shell gave up on this call's analysis)."""
        self.amd = None
        self._gather = None
        self._flush_at = None

    def packet(self, data: bytes, now: float) -> list[Heard]:
        self._flush_at = now + FLUSH_S
        return self._released(self.receiver.packet(data, now), now)

    def info(self, digit: str, now: float) -> list[Heard]:
        return self._digit(digit, self._ms(now), "info", now)

    def deadline(self) -> float | None:
        times = [t for t in (self._flush_at,) if t is not None]
        if self.amd is not None and (at := self.amd.deadline()) is not None:
            times.append(self.answered_at + at / 1000 + AMD_LAG_S)
        if self._gather is not None and (at_s := self._gather.deadline()) is not None:
            times.append(at_s)
        return min(times) if times else None

    def tick(self, now: float) -> list[Heard]:
        heard: list[Heard] = []
        if self._flush_at is not None and now >= self._flush_at:
            self._flush_at = None
            heard += self._released(self.receiver.flush(), now)
        if self.amd is not None:
            heard += self._amd(self.amd.tick(self._ms(now - AMD_LAG_S)))
        if self._gather is not None and (result := self._gather.tick(now)) is not None:
            heard += self._gathered(result)
        return heard

    # -- inside ------------------------------------------------------------------------------------
    def _ms(self, now: float) -> int:
        return round((now - self.answered_at) * 1000)

    def _released(self, items: list[AudioFrame | EventPayload], now: float) -> list[Heard]:
        heard: list[Heard] = []
        for item in items:
            if isinstance(item, EventPayload):
                if self._gather is None:
                    continue
                try:
                    press = self._events.receive(item.payload, item.timestamp)
                except DtmfError:
                    continue  # a short telephone-event payload: nothing pressed
                if press is not None:
                    heard += self._digit(press.digit, item.t_ms, "rfc4733", now)
                continue
            if self.amd is None and self._gather is None:
                continue
            for t_ms, frame in _frames(item):
                if self.amd is not None:
                    heard += self._amd(self.amd.feed(frame, t_ms))
                if self._gather is not None:
                    for found in self._inband.feed(frame, t_ms):
                        heard += self._digit(found.digit, found.start_ms, "inband", now)
        return heard

    def _amd(self, events: list[AmdVerdict | MachineEnd]) -> list[Heard]:
        heard: list[Heard] = []
        for event in events:
            if isinstance(event, AmdVerdict) and self.verdict is None:
                self.verdict = event
                heard.append(Verdict(event))
                if not (self.until_end and event.answered_by == "machine_start"):
                    self.amd = None
                    break
            elif isinstance(event, MachineEnd) and self.verdict is not None:
                heard.append(GreetingEnded(event, self.verdict))
                self.amd = None
                break
        return heard

    def _digit(self, digit: str, t_ms: int, via: Via, now: float) -> list[Heard]:
        if self._gather is None:
            return []
        for press in self._presses:
            if (
                press.digit == digit
                and press.via != via
                and via not in press.matched
                and abs(press.t_ms - t_ms) <= SAME_PRESS_MS
            ):
                press.matched.add(via)
                return []
        self._presses = [p for p in self._presses if t_ms - p.t_ms <= SAME_PRESS_MS] + [_Press(digit, t_ms, via)]
        if self._first_via is None:
            self._first_via = via
        heard: list[Heard] = [Pressed(digit, via)]
        try:
            result = self._gather.digit(digit, now)
        except DtmfError:
            return []
        if result is not None:
            heard += self._gathered(result)
        return heard

    def _gathered(self, result: GatherResult) -> list[Heard]:
        self._gather = None
        via = self._first_via if result.digits else None
        return [Gathered(result, via)]


def _frames(item: AudioFrame) -> list[tuple[int, Pcm]]:
    """The frame as 20 ms pieces (a far end may send 10, 30 or 40 ms a packet)."""
    pcm = item.pcm
    if pcm.size == FRAME:
        return [(item.t_ms, pcm)]
    pieces = []
    for i in range(0, max(pcm.size, 1), FRAME):
        pieces.append((item.t_ms + (i // FRAME) * FRAME_MS, as_frame(np.asarray(pcm[i : i + FRAME], dtype=np.int16))))
    return pieces
