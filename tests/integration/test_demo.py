"""`telgate demo` as the README's first command runs it (small and fast), on Mosquitto and on the
embedded MQTT 3.1.1 broker: the final counts add up, every contact settled — final, or (WhatsApp)
delivered and not read, which SPEC §5.2 does not make final — the customers' replies came back with their
outcomes, and the peers' records match the events."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
VOICE_FINAL = {
    "success",
    "completed_without_answer",
    "dial_failed",
    "invalid_record",
    "canceled_by_client",
}
WHATSAPP_SETTLED = {"replied", "read", "delivered", "delivery_failed", "sending_failed", "error", "invalid_record"}


@pytest.mark.parametrize("broker", ["auto", "embedded"])
def test_demo_runs_both_campaigns_to_the_end(broker: str) -> None:
    telgate = Path(sys.executable).with_name("telgate")
    out = subprocess.run(
        [str(telgate), "demo", "--contacts", "12", "--speed", "20", "--json", "--broker", broker],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    counts = summary["counts"]
    assert sum(counts["demo-calls"].values()) == 12 and sum(counts["demo-notices"].values()) == 12
    assert set(counts["demo-calls"]) <= VOICE_FINAL, counts
    assert set(counts["demo-notices"]) <= WHATSAPP_SETTLED, counts
    assert summary["settled"] == summary["contacts"] == 24 and summary["stalled"] == []
    assert summary["final"] == 24 - counts["demo-notices"].get("delivered", 0)
    assert summary["call_attempts"] >= 12 and 0 < summary["answered"] <= summary["call_attempts"]
    assert 0 <= summary["asr"] <= 1 and summary["whatsapp_sent"] >= 1
    # some who read the message answered it (a quick-reply Confirm or Decline, a question, one STOP): each
    # reply came back as the contact's final status `replied` with the outcome the campaign's rules give it
    replies = summary["replies"]
    assert summary["replied"] == counts["demo-notices"].get("replied", 0) == sum(replies.values()) >= 1, summary
    assert set(replies) <= {"confirm", "decline", "opt_out", "other"} and replies.get("opt_out") == 1, replies
    assert 0 < summary["reply_rate"] <= 1 and "whatsapp replies:" in out.stderr
    assert summary["metrics"].endswith("/metrics") and summary["readyz"].endswith("/readyz")
    expected = "amqtt (embedded, MQTT 3.1.1)" if broker == "embedded" else "mosquitto"
    assert summary["broker"] == expected
    # the wire ledger (SPEC §9), checked by the demo itself: the INVITEs the PBX simulator received and the
    # send requests the Cloud API stand-in received are the attempts in the events, contact by contact
    wire = summary["wire"]
    assert wire["ok"] and wire["mismatches"] == [], wire
    voice, whatsapp = wire["voice"], wire["whatsapp"]
    assert voice["contacts"] == whatsapp["contacts"] == 12, wire
    assert voice["invites"] == voice["attempts"] == summary["call_attempts"] >= 12, wire
    assert whatsapp["sends"] == whatsapp["attempts"] >= 12, wire
    assert f"wire ledger: {voice['invites']} INVITEs / {whatsapp['sends']} sends match the events" in out.stderr
    # submitted as a backend does: the campaigns, then the contacts in one bulk per channel, through the
    # command window (every result awaited; nothing had to be published twice on a quiet loopback)
    # a re-publish says a command waited 30 s for its result or the client reconnected: the log says which
    assert summary["commands"] == {"campaign": 4, "dial": 1, "send": 1, "republished": 0}, (
        summary["commands"],
        out.stderr[-4000:],
    )
    # the live view went to stderr with the progress bars and the table
    assert "demo-calls" in out.stderr and "contacts per status" in out.stderr


def test_readme_starts_with_the_demo_and_the_tests() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert first_block is not None
    commands = [line for line in first_block.group(1).splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[0].endswith("telgate demo") and "pip install" in commands[0]
    assert commands[1] == "bash .ci/run"


def _channels_in_flight(tmp_path: Path) -> int:
    """How many channels have a contact in flight in the demo's store (0 before it exists)."""
    for db in tmp_path.glob("telgate-demo-*/var/telgate.db"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
                row = conn.execute("SELECT COUNT(DISTINCT channel) FROM contacts WHERE in_flight = 1").fetchone()
        except sqlite3.OperationalError:  # not created yet (no contacts table)
            return 0
        return int(row[0])
    return 0


def test_ctrl_c_stops_everything_cleanly(tmp_path: Path) -> None:
    telgate = Path(sys.executable).with_name("telgate")
    proc = subprocess.Popen(
        [str(telgate), "demo", "--contacts", "200", "--speed", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    try:
        # calls and sends under way: the demo's gateway has contacts of both channels in flight (its store)
        deadline = time.monotonic() + 60
        while _channels_in_flight(tmp_path) < 2:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the demo never had calls and sends under way"
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "demo stopped" in err
    assert not list(tmp_path.glob("telgate-demo-*")), "the demo's temporary folder was removed"
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left behind: {leftovers}"
