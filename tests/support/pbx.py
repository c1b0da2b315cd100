"""A PBX side made of programs we did not write: Kamailio (registrar + record-routing proxy with digest
auth, tests/pbx/kamailio.cfg) and baresip (a softphone that registers numbers and auto-answers)."""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .certs import Issued
from .procs import binary, stop, wait_tcp

CONFIG = Path(__file__).resolve().parents[1] / "pbx"
BARESIP_MODULES = next(
    (p for p in (Path("/usr/lib/baresip/modules"), Path("/usr/lib/x86_64-linux-gnu/baresip/modules")) if p.is_dir()),
    Path("/usr/lib/baresip/modules"),
)


def free_port_pair() -> int:
    """A port free on UDP and TCP, with the next one free too (baresip takes SIP port + 1 for TLS)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
        if port >= 65534:
            continue
        try:
            for p in (port, port + 1):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(socket.AF_INET, kind) as s:
                        s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair")


def _wait(predicate: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen in {timeout}s; log:\n{log.read_text(errors='replace')[-3000:]}")


def _tls_module_installed() -> bool:
    return any(Path("/usr/lib").glob("*/kamailio/modules/tls.so")) or Path("/usr/lib/kamailio/modules/tls.so").exists()


@dataclass(frozen=True)
class KamailioTls:
    """Kamailio's TLS listener: its certificate, the CAs it trusts, and whether clients must show one."""

    cert: Issued
    ca: Path
    verify_clients: bool = False


class Kamailio:
    """Kamailio on a free port (UDP and TCP), or on `port`; with `tls`, a TLS listener on the next port too."""

    def __init__(
        self,
        workdir: Path,
        password: str = "secret",
        tls: KamailioTls | None = None,
        config: Path = CONFIG / "kamailio.cfg",
        fill: dict[str, str] | None = None,  # more placeholders of `config` and their values
        memory_mb: int = 32,
        port: int | None = None,  # the ports of a Kamailio stopped before (a PBX restarted in place)
    ) -> None:
        self.binary = binary("kamailio", "kamailio")
        if tls is not None and not _tls_module_installed():
            raise RuntimeError(
                "Kamailio's tls module is not installed (apt-get install kamailio-tls-modules; bash .ci/run does)"
            )
        self.port = port or free_port_pair()
        self.tls_port = self.port + 1  # free_port_pair checked it too
        self.tls = tls
        self.memory_mb = memory_mb
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.cfg = workdir / "kamailio.cfg"
        text = config.read_text()
        for name, value in (fill or {}).items():
            text = text.replace(name, value)
        text = (
            text.replace("LISTEN_PORT", str(self.port))
            .replace("KPASS", password)
            .replace("TLS_PORT", str(self.tls_port))
        )
        if tls is not None:
            text = text.replace("TLS_CERT", str(tls.cert.cert)).replace("TLS_KEY", str(tls.cert.key))
            text = text.replace("TLS_CA", str(tls.ca)).replace("TLS_VERIFY", "1" if tls.verify_clients else "0")
        self.cfg.write_text(text)
        self.log = workdir / "kamailio.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def __enter__(self) -> Kamailio:
        cmd = [self.binary, "-f", str(self.cfg), "-DD", "-E", "-m", str(self.memory_mb), "-M", "8"]
        if self.tls is not None:
            cmd += ["-A", "WITH_TLS"]
        cmd += ["-P", str(self.workdir / "kamailio.pid"), "-Y", str(self.workdir)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait(self._answers, 10, "kamailio answering OPTIONS", self.log)
            if self.tls is not None:
                wait_tcp(self.tls_port, "kamailio's TLS listener")
        except BaseException:
            self.__exit__()  # __exit__ is not called when __enter__ fails: do not leave kamailio behind
            raise
        return self

    def _answers(self) -> bool:
        probe = (
            f"OPTIONS sip:127.0.0.1:{self.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKprobe\r\n"
            "From: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: probe\r\nCSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.bind(("127.0.0.1", 0))
            s.sendto(probe.encode(), ("127.0.0.1", self.port))
            try:
                return s.recv(4096).startswith(b"SIP/2.0 200")
            except OSError:
                return False

    def logged(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)


class Baresip:
    """One baresip with an auto-answering account per user, registered through `proxy`."""

    def __init__(
        self,
        workdir: Path,
        proxy: str,
        users: tuple[str, ...],
        password: str = "secret",
        tls: tuple[Issued, Path] | None = None,  # (its certificate, the CA of the proxy's): register over TLS
        audio_file: Path | None = None,  # a WAV (8 kHz mono 16-bit) its calls play in place of a 440 Hz sine
    ) -> None:
        self.binary = binary("baresip", "baresip")
        self.port = free_port_pair()
        self.workdir = workdir
        self.users = users
        workdir.mkdir(parents=True, exist_ok=True)
        source = ["audio_source\tausine,440", "ausrc_srate\t48000", "ausrc_channels\t2"]  # ausine: 48 kHz only
        if audio_file is not None:
            source = [f"audio_source\taufile,{audio_file}", "ausrc_srate\t8000", "ausrc_channels\t1"]
            # its media on loopback: without this baresip binds its media to the host's other address
            # (eth0 here), and telgate on 127.0.0.1 heard nothing of the file (NOAUDIODATA)
            source.append("net_interface\t127.0.0.1")
        config = [
            f"sip_listen\t127.0.0.1:{self.port}",
            "sip_trans_def\tudp",
            *source,
            f"module_path\t{BARESIP_MODULES}",
            "module\tg711.so",
            f"module\t{'ausine.so' if audio_file is None else 'aufile.so'}",
            "module\taccount.so",
            "module\tmenu.so",
            "call_max_calls\t8",
        ]
        transport = ""
        if tls is not None:  # its TLS listener (SIP port + 1) needs a certificate; it checks the proxy's with the CA
            config[1] = "sip_trans_def\ttls"
            config += [f"sip_certificate\t{tls[0].bundle(workdir / 'baresip.pem')}", f"sip_cafile\t{tls[1]}"]
            transport = ";transport=tls"
        (workdir / "config").write_text("\n".join(config) + "\n")
        accounts = [
            f'<sip:{u}@127.0.0.1{transport}>;auth_pass={password};outbound="sip:{proxy}{transport}";answermode=auto;'
            "regint=60"
            for u in users
        ]
        (workdir / "accounts").write_text("\n".join(accounts) + "\n")
        self.log = workdir / "baresip.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> Baresip:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-f", str(self.workdir), "-4"],
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            _wait(lambda: self.text().count(" 200 OK ") >= len(self.users), 10, "baresip registering", self.log)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc)
