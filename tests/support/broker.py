"""A real Mosquitto, started on a free port by the test that owns it (and can kill it)."""

from __future__ import annotations

import asyncio
import getpass
import re
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

from .procs import kill as kill_process
from .procs import stop as stop_process
from .procs import wait_tcp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "mosquitto.conf"


def shipped_limits() -> str:
    """The queue and packet limits users run (deploy/mosquitto/mosquitto.conf), never looser ones: an
    unlimited test broker once hid the loss of most of a burst of commands (issue 11)."""
    text = SHIPPED.read_text()
    begin, end = text.index("# --- telgate limits: begin"), text.index("# --- telgate limits: end")
    lines = [ln for ln in text[begin:end].splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert any(ln.startswith("max_queued_messages") for ln in lines), "the shipped limits are missing"
    return "\n".join(lines) + "\n"


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, tls: tuple[Path, Path, Path] | None = None) -> None:
        """`tls` = (CA, certificate, key): a second listener, MQTT over TLS on `tls_port`."""
        self.binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # user -> password, when the broker has users (shipped_broker); this one lets anyone in
        self.passwords: dict[str, str] = {}
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nset_tcp_nodelay true\n{shipped_limits()}"
            f"log_dest file {workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            # one line per subscription, written once it is in place: what `subscribed` waits for
            "log_type subscribe\n"
            # as root, mosquitto drops to the `mosquitto` user, which cannot write the test's own folder:
            # persistence (sessions kept across a restart) would be lost silently
            f"user {getpass.getuser()}\n"
        )
        self.tls_port = free_port() if tls else None
        if tls:
            ca, cert, key = tls
            with self.conf.open("a") as conf:
                conf.write(f"listener {self.tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_tcp(self.port, "mosquitto")
        if self.tls_port:
            wait_tcp(self.tls_port, "mosquitto (TLS)")

    def subscriptions(self, topic: str) -> list[str]:
        """The client ids whose SUBSCRIBE to `topic` (the filter as sent) this broker has taken, in order
        (its log: `<time>: <client id> <qos> <filter>`, written after the subscription was added)."""
        log = self.workdir / "mosquitto.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [m.group(1) for m in re.finditer(rf"^\d+: (\S+) \d {re.escape(topic)}$", text, re.MULTILINE)]

    async def subscribed(self, topic: str, count: int, timeout_s: float = 15.0) -> None:
        """Return once `count` subscriptions to `topic` are in place (a process's SUBSCRIBE seen by the
        broker: there is no SUBACK to await from outside that process)."""
        async with asyncio.timeout(timeout_s):
            while len(self.subscriptions(topic)) < count:
                await asyncio.sleep(0.02)

    def kill(self) -> None:
        kill_process(self.proc)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


def shipped_broker(workdir: Path, users: tuple[str, ...] = ("telgate", "backend")) -> Mosquitto:
    """Mosquitto with the whole shipped configuration (deploy/mosquitto: the ACL, the limits, users with
    passwords), on a free port with its data and log in `workdir`. Not started.

    The repository ships no password: as deploy/init-secrets.sh does for the stack, each of `users` gets
    192 random bits in hex, made now, hashed into the password file by mosquitto_passwd -U and kept in
    `broker.passwords` for the test's clients."""
    deploy = SHIPPED.parent
    workdir.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(workdir / "mq", port=free_port())
    broker.passwords = {user: secrets.token_hex(24) for user in users}
    passwd = workdir / "passwd"
    passwd.touch(mode=0o600)  # mosquitto warns of a password file other users can read
    passwd.write_text("".join(f"{user}:{password}\n" for user, password in broker.passwords.items()))
    passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([passwd_tool, "-U", str(passwd)], check=True)
    hashed = passwd.read_text()
    assert all(f"{user}:{password}" not in hashed for user, password in broker.passwords.items()), "not hashed"
    conf = (
        SHIPPED.read_text()
        .replace("/mosquitto/config/passwd", str(passwd))
        .replace("/mosquitto/config/acl", str(deploy / "acl"))
        .replace("/mosquitto/data/", f"{workdir}/")
        .replace("listener 1883", f"listener {broker.port} 127.0.0.1")
        .replace("log_dest stdout", f"log_dest file {workdir}/mq.log")
    )
    broker.conf.write_text(conf + f"user {getpass.getuser()}\n")
    return broker
