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
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait_listening(self, timeout: float = 10.0) -> None:
        """For TCP: SIPp accepts connections (it opens its listener a moment after it starts)."""
        wait_tcp(self.port, "SIPp", timeout)

    def messages(self) -> list[str]:
        """The SIP messages SIPp logged (`-trace_msg`), each as text, in order."""
        out: list[str] = []
        for path in sorted(self.workdir.glob("*_messages.log")):
            chunks = re.split(r"^-{20,} .*$", path.read_text(errors="replace"), flags=re.MULTILINE)
            out += [c.strip().replace("\r\n", "\n") for c in chunks if c.strip()]
        return out

    def errors(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.workdir.glob("*_errors.log"))
