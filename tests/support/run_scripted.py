"""Run a gateway with scripted channel ports: `python -m tests.support.run_scripted CONFIG DELAY [RATE [RECORD]]`.

Used by the crash tests, which need a real process to SIGKILL. With RECORD, the ports append every
dial/send they carry out to that file (the wire ledger outlives the process).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from gateway import logs
from gateway.config import load_settings
from gateway.domain.statuses import Channel
from gateway.service.app import App

from .scripted import ScriptedPort


async def main(config: str, delay: float, rate: float, record: Path | None = None) -> None:
    app = App(load_settings(config))
    for ch in (Channel.VOICE, Channel.WHATSAPP):
        if ch in app.ports:  # configured for real (e.g. WhatsApp against the Cloud API stand-in)
            continue
        app.add_port(ScriptedPort(app.engine, ch, delay_s=delay, max_rate=rate, max_concurrent=100_000, record=record))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await app.run(stop)


if __name__ == "__main__":
    logs.setup("INFO")
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 1000.0
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), rate, Path(sys.argv[4]) if len(sys.argv) > 4 else None))
