"""SIPp (Debian `sip-tester`) as the PBX: one UAS scenario from tests/sipp/, on a free UDP port."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

from .procs import wait_tcp

SCENARIOS = Path(__file__).resolve().parents[1] / "sipp"


def free_udp_port() -> int:
    """A port free for UDP and for TCP at once (SIPp over TCP listens on its UDP port number; TCP and UDP
    ports are separate spaces, and a port free for one was once another socket's on the other)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


class Sipp:
    def __init__(
        self, scenario: str, workdir: Path, calls: int = 1, extra: tuple[str, ...] = (), timeout_s: int = 60
    ) -> None:
        binary = shutil.which("sipp")
        if binary is None:
            raise RuntimeError("sipp is not installed (apt-get install sip-tester; bash .ci/run does)")
        self.port = free_udp_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cmd = [
            binary,
            "-sf",
            str(SCENARIOS / scenario),
            "-i",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-nostdin",
            "-m",
            str(calls),
            "-timeout",  # SIPp quits after this long: a test must finish with its PBX
            str(timeout_s),
            "-trace_err",
            "-trace_msg",  # the wire ledger reads what SIPp received (tests/support/ledger.py)
            "-bind_local",
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Sipp:
        self._start()
        return self

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_listening(self, timeout: float = 10.0) -> None:
        """For TCP: SIPp accepts connections (it opens its listener a moment after it starts). Before
        anything was given its address: a SIPp that could not bind its port (taken between the choice and
        SIPp's bind) is started again on another one."""
        for _ in range(3):
            try:
                wait_tcp(self.port, "SIPp", timeout, alive=lambda: self.proc is None or self.proc.poll() is None)
                return
            except RuntimeError:
                if self.proc is None or self.proc.poll() is None:
                    raise
            self.port = free_udp_port()
            self.cmd[self.cmd.index("-p") + 1] = str(self.port)
            self._start()
        raise RuntimeError(f"SIPp exited three times before it listened: {self.errors()}")

    def messages(self) -> list[str]:
        """The SIP messages SIPp logged (`-trace_msg`), each as text, in order."""
        out: list[str] = []
        for path in sorted(self.workdir.glob("*_messages.log")):
            chunks = re.split(r"^-{20,} .*$", path.read_text(errors="replace"), flags=re.MULTILINE)
            out += [c.strip().replace("\r\n", "\n") for c in chunks if c.strip()]
        return out

    def errors(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.workdir.glob("*_errors.log"))
