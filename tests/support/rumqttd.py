"""rumqttd, a second MQTT 5 broker independent of Mosquitto, started on a free port by the test that owns it.

The broker is the Rust rumqttd (0.20) compiled into the `iotcore` wheel (a test extra): no system package,
run as its own process (`python -m iotcore --config …`) so a test can stop or kill it like Mosquitto.

What it does differently from Mosquitto 2.0, probed with paho (MQTT 5, QoS 1, manual acks):
- shared subscriptions (`$share/{group}/…`, round robin) route only to members that are connected; a
  group with no member connected queues for an offline persistent session;
- a session persists only when the client connects with clean_start=False (clean_start=True with a
  Session Expiry Interval is not kept), kept in memory (lost with the broker process), and the Session
  Expiry Interval is ignored, in CONNECT and in DISCONNECT alike: the session never expires;
- unacknowledged QoS 1 messages are sent again on the reconnect, without the DUP flag;
- Receive Maximum is ignored: the broker sends up to its own `max_inflight_count` (set here) unacked;
- Response Topic, Correlation Data, retained messages and 1 MiB payloads pass through.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from .broker import free_port
from .procs import kill as kill_process
from .procs import stop as stop_process
from .procs import wait_tcp

# the limits that matter to telgate, as close to deploy/mosquitto's as rumqttd has: a bulk command is
# 1 MiB (SPEC §4); 256 commands in flight is the gateway's Receive Maximum, which rumqttd does not read
CONFIG = """\
id = 0

[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 16777216
max_segment_count = 10

[v5.1]
name = "v5-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 2097152
    max_inflight_count = 256
"""


class Rumqttd:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "rumqttd.toml"
        self.conf.write_text(CONFIG.format(port=self.port))
        self.log = workdir / "rumqttd.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        if importlib.util.find_spec("iotcore") is None:
            raise RuntimeError("rumqttd comes with the iotcore wheel: pip install -e '.[test]'")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iotcore", "--config", str(self.conf), "--log-level", "WARNING"],
                cwd=self.workdir,  # never a folder with an `iotcore` of its own in front of the package
                stdout=out,
                stderr=out,
            )
        wait_tcp(self.port, "rumqttd")

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
