"""A redeploy: the same data dir started under a new `gateway.id` strands no command (issue 21).

Before, the new id joined the command share group beside its own old persistent session, and Mosquitto
handed that offline session every other command: 10 of 20 answered, the rest dropped an hour later.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_faults import _start_gateway, check_stream
from tests.support import ledger
from tests.support.broker import Mosquitto
from tests.support.harness import Backend, backend, store_toml

pytestmark = [pytest.mark.integration, pytest.mark.both_stores]


def _config(path: Path, data: Path, broker_url: str, gateway_id: str | None) -> Path:
    ident = f'id = "{gateway_id}"\n' if gateway_id else ""
    path.write_text(
        f'[gateway]\n{ident}data_dir = "{data}"\ndrain_timeout_s = 5\n[bus]\nurl = "{broker_url}"\n'
        f'[http]\nlisten = "127.0.0.1:0"\n{store_toml()}'
    )
    return path


def _dial(cid: str) -> dict[str, Any]:
    return {"command_id": cid, "campaign_id": "redeploy", "contact_id": cid, "phone": "+420601234560"}


def _answered_once(b: Backend, ids: list[str]) -> None:
    for cid in ids:
        # at least once on the bus: the same outbox row published again after a SIGKILL is the same answer
        fresh = list(
            {
                json.dumps(r, sort_keys=True): r for r in b.results if r["command_id"] == cid and not r["duplicate"]
            }.values()
        )
        assert len(fresh) == 1, f"{cid}: {len(fresh)} different first answers: {fresh}"
        assert fresh[0]["accepted"], fresh[0]


def _settled(b: Backend, cid: str) -> bool:
    if b.final("redeploy", cid):
        return True
    last = b.unique("redeploy", cid)[-1:]
    return bool(last) and last[0]["status"] == "retry_scheduled" and last[0]["signal"]["kind"] == "gateway_restart"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_the_same_data_dir_under_a_new_id_answers_every_command(
    broker: Mosquitto, tmp_path: Path, stop: signal.Signals
) -> None:
    data, log, record = tmp_path / "gw", tmp_path / "gateway.log", tmp_path / "started.txt"
    old = _config(tmp_path / "old.toml", data, broker.url, "gw-old")
    new = _config(tmp_path / "new.toml", data, broker.url, "gw-new")
    proc = _start_gateway(old, log, record)
    try:
        async with backend(broker.url) as b:
            await b.wait_for(lambda: b.presence.get("gw-old") == "online", timeout=20)
            before = [f"a{i}" for i in range(5)]
            for cid in before:
                await b.send("dial", _dial(cid))
            await b.wait_for(lambda: all(b.result(c) for c in before), timeout=20)
            proc.send_signal(stop)
            proc.wait(20)
            while_down = [f"d{i}" for i in range(20)]
            for cid in while_down:  # the broker keeps them for the old session, the share group's only member
                await b.send("dial", _dial(cid))
            proc = _start_gateway(new, log, record)
            await b.wait_for(lambda: b.presence.get("gw-new") == "online", timeout=20)
            after = [f"n{i}" for i in range(20)]
            for cid in after:
                await b.send("dial", _dial(cid))
            everything = before + while_down + after
            await b.wait_for(lambda: all(b.result(c) for c in everything), timeout=60)
            _answered_once(b, everything)
            # a call the old process left in flight is settled by the new one under SPEC §9's restart rule
            # (a SIGKILL mid-call: `retry_scheduled`, signal gateway_restart), whatever its id was
            await b.wait_for(lambda: all(_settled(b, c) for c in everything), timeout=30)
            check_stream(b)
            # the wire: every contact dialled once, by one of the two processes
            seen = await ledger.check(b, "voice", ledger.scripted_file(record), by="contact")
            assert seen.compared == len(everything) and seen.attempts == seen.wire == len(everything)
        kept = json.loads((data / "gateway-id.json").read_text())
        assert kept["gateway_id"] == "gw-new" and kept["earlier"] == [], kept  # the old session was ended
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, log.read_text()[-2000:]


async def test_the_default_id_is_kept_with_the_data_dir(broker: Mosquitto, tmp_path: Path) -> None:
    data, log = tmp_path / "gw", tmp_path / "gateway.log"
    cfg = _config(tmp_path / "telgate.toml", data, broker.url, None)
    ids: list[str] = []
    async with backend(broker.url) as b:
        for _ in range(2):
            b.presence.clear()
            proc = _start_gateway(cfg, log)
            try:
                await b.wait_for(lambda: any(s == "online" for s in b.presence.values()), timeout=20)
                ids.append(next(gid for gid, s in b.presence.items() if s == "online"))
            finally:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(20) == 0, log.read_text()[-2000:]
            await b.wait_for(lambda: b.presence.get(ids[-1]) == "offline", timeout=10)
    assert ids[0] == ids[1] and ids[0].startswith("gw-"), ids
