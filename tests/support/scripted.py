"""A scripted channel port for core tests (the voice and WhatsApp adapters have their own issues).

The outcome of an attempt is chosen by the number's last digit, like a test PBX's dial plan:
0 answered then hung up · 1 busy (486) · 2 no answer (480) · 3 failure (503) · 4 bad number (404) ·
5 answered and held until cancelled · 6 ringing until cancelled · otherwise answered then hung up.
On an answered call a prompt "plays" for `delay_s` and reports `prompt_done`; a transfer reports
`transfer_done` ok at once; a hang-up is recorded (the script's call ends on its own).
WhatsApp: accepted, then sent, delivered, read.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from gateway.domain import effects as fx
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState
from gateway.domain.statuses import Channel
from gateway.engine.engine import Engine

OUTCOMES = {
    "1": (Kind.REJECTED, 486, "Busy Here", 17),
    "2": (Kind.UNREACHABLE, 480, "Temporarily Unavailable", 18),
    "3": (Kind.FAILED, 503, "Service Unavailable", None),
    "4": (Kind.INVALID_NUMBER, 404, "Not Found", 1),
}


class ScriptedPort:
    def __init__(
        self,
        engine: Engine,
        channel: Channel,
        max_concurrent: int = 100,
        max_rate: float = 1000.0,
        delay_s: float = 0.01,
        record: Path | None = None,
    ) -> None:
        self.engine = engine
        self.channel = channel
        self.max_concurrent = max_concurrent
        self.max_rate = max_rate
        self.delay_s = delay_s
        self._active: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self.started: list[tuple[str, str, int]] = []  # the wire ledger: every dial/send carried out
        self.controls: list[tuple[str, str, fx.Effect]] = []  # prompts, transfers, hang-ups carried out
        self._reports: set[asyncio.Task[Any]] = set()
        self.record = record  # …also appended to this file, a line per dial/send, when the process may die

    async def run(self) -> None:
        await asyncio.Event().wait()  # its attempts run as tasks of their own, cancelled with the loop

    def active(self, campaign_id: str | None = None) -> int:
        if campaign_id is None:
            return len(self._active)
        return sum(1 for k in self._active if k[0] == campaign_id)

    def active_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for campaign_id, _contact in self._active:
            counts[campaign_id] = counts.get(campaign_id, 0) + 1
        return counts

    def submit(self, effect: fx.Effect, contact: ContactState) -> None:
        key = (contact.campaign_id, contact.contact_id)
        if isinstance(effect, fx.CancelCall):
            task = self._active.get(key)
            if task is not None:
                task.cancel()
            return
        if isinstance(effect, fx.PlayPrompt | fx.Transfer | fx.HangUp):
            self.controls.append((*key, effect))
            report = self._report(key, effect, contact.attempt)
            if report is not None:
                task = asyncio.get_running_loop().create_task(report)
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)
            return
        assert isinstance(effect, fx.Dial | fx.Send)
        self.started.append((*key, effect.attempt))
        if self.record is not None:
            with self.record.open("a") as out:
                out.write(f"{key[0]} {key[1]} {effect.attempt}\n")
        task = asyncio.get_running_loop().create_task(self._attempt(key, contact, effect.attempt))
        self._active[key] = task
        task.add_done_callback(lambda _t: self._active.pop(key, None))

    def _report(self, key: tuple[str, str], effect: fx.Effect, attempt: int) -> Any:
        call = {"source": "sip", "call_id": f"call-{key[1]}-{attempt}"}
        if isinstance(effect, fx.PlayPrompt):
            return self._after(key, Kind.PROMPT_DONE, attempt, {**call, "kind": "prompt_done"})
        if isinstance(effect, fx.Transfer):
            evidence = {**call, "kind": "transfer_done", "ok": True, "sip_code": 200, "reason": "OK"}
            return self._after(key, Kind.TRANSFER_DONE, attempt, evidence, wait=False)
        return None

    async def _after(
        self, key: tuple[str, str], kind: Kind, attempt: int, evidence: dict[str, Any], wait: bool = True
    ) -> None:
        if wait:
            await asyncio.sleep(self.delay_s)
        await self._emit(key, kind, attempt, evidence=evidence)

    async def _emit(self, key: tuple[str, str], kind: Kind, attempt: int, **kw: Any) -> None:
        await self.engine.signal(key, Signal(kind, attempt=attempt, **kw))

    async def _attempt(self, key: tuple[str, str], contact: ContactState, attempt: int) -> None:
        d = self.delay_s
        if self.channel is Channel.WHATSAPP:
            ev = {"source": "whatsapp", "wa_message_id": f"wamid.{key[1]}.{attempt}"}
            await asyncio.sleep(d)
            await self._emit(
                key, Kind.WA_ACCEPTED, attempt, evidence={**ev, "kind": "accepted"}, wamid=ev["wa_message_id"]
            )
            for kind in (Kind.WA_SENT, Kind.WA_DELIVERED, Kind.WA_READ):
                await asyncio.sleep(d)
                await self._emit(key, kind, attempt, evidence={**ev, "kind": kind.value.removeprefix("wa_")})
            return
        digit = (contact.phone or "0")[-1]
        call = {"source": "sip", "call_id": f"call-{key[1]}-{attempt}"}
        try:
            await asyncio.sleep(d)
            await self._emit(key, Kind.RINGING, attempt, evidence={**call, "kind": "ringing", "sip_code": 180})
            if digit == "6":
                await asyncio.Event().wait()
            if digit in OUTCOMES:
                kind, code, reason, q850 = OUTCOMES[digit]
                await asyncio.sleep(d)
                await self._emit(
                    key,
                    kind,
                    attempt,
                    evidence={**call, "kind": kind.value, "sip_code": code, "reason": reason, "q850_cause": q850},
                )
                return
            await asyncio.sleep(d)
            await self._emit(key, Kind.ANSWERED, attempt, evidence={**call, "kind": "answered", "sip_code": 200})
            if digit == "5":
                await asyncio.Event().wait()
            await asyncio.sleep(d)
            await self._emit(
                key, Kind.HANGUP, attempt, duration_s=12.0, evidence={**call, "kind": "hangup", "duration_s": 12.0}
            )
        except asyncio.CancelledError:
            # the CANCEL's outcome; bounded: when the loop itself is closing the engine is gone, and a
            # shielded wait for it would hang the shutdown forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(
                        self._emit(
                            key,
                            Kind.UNREACHABLE,
                            attempt,
                            evidence={**call, "kind": "unreachable", "sip_code": 487, "reason": "Request Terminated"},
                        )
                    )
            raise
