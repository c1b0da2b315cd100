"""A private PostgreSQL server started by the test (or benchmark) that owns it, on a free port.

initdb + pg_ctl in a temporary folder. PostgreSQL refuses to run as root: as root the folder is given to
the `postgres` user and every server program runs as that user (`runuser`). Debian keeps the programs in
/usr/lib/postgresql/<version>/bin, off PATH: that is searched too. Missing programs are a failure that
says what to install, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .broker import free_port
from .procs import wait_tcp

# fast and still crash-safe for what the tests do to it: a killed server loses nothing the OS has
# (fsync=off only matters when the machine itself goes down)
TEST_OPTIONS = ("-c fsync=off", "-c full_page_writes=off", "-c max_connections=40", "-c shared_buffers=32MB")


def bindir() -> Path:
    """The folder with initdb, pg_ctl and postgres: on PATH, or Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    if found is not None and shutil.which("initdb") is not None:
        return Path(found).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError(
            "PostgreSQL server programs (initdb, pg_ctl) not found on PATH nor in /usr/lib/postgresql/*/bin:"
            " apt-get install postgresql (bash .ci/run does)"
        )
    return candidates[-1].parent


class Postgres:
    """One server: `init()` once, then `start()` / `kill()` / `start()` … `stop()` (which removes it)."""

    def __init__(self, options: tuple[str, ...] = TEST_OPTIONS) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="tgpg-"))  # short: the socket path has a length limit
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self.options = options
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self.as_postgres, *args], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}")

    def init(self) -> None:
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 {' '.join(self.options)}"
        deadline = time.monotonic() + 20
        while True:  # after a kill the old server's children may hold its shared memory a moment longer
            try:
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start"
                )
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait_tcp(self.port, "postgres")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL of the postmaster, as a crash would; returns once its children are gone too."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = [p for p in _pids() if _ppid(p) == pid]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in [pid, *children]) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        if self.postmaster_pid() is not None and self.data.exists():
            with contextlib.suppress(RuntimeError):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """A new empty database on this server; its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # the name comes from the test, not from outside
        return self.url_for(name)


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid …


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")  # a zombie holds no shared memory


@contextlib.contextmanager
def running_postgres(options: tuple[str, ...] = TEST_OPTIONS) -> Iterator[Postgres]:
    server = Postgres(options)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def _for_test() -> Iterator[Postgres]:
    try:
        cm = running_postgres()
        server = cm.__enter__()
    except RuntimeError as exc:  # not installed, or would not start: say so, never skip
        pytest.fail(f"a private PostgreSQL is required: {exc}")
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[Postgres]:
    """One server for a test module; each test takes a database of its own (`create_database`)."""
    with _for_test() as server:
        yield server


@pytest.fixture
def postgres_own_server() -> Iterator[Postgres]:
    """A server for one test, which may kill and restart it."""
    with _for_test() as server:
        yield server
