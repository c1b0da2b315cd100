"""What every peer process the tests start needs: find its binary, wait for its port, stop it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable


def binary(name: str, package: str) -> str:
    """The program's path (Debian puts daemons in /usr/sbin, which a user's PATH may lack)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed (apt-get install {package}; bash .ci/run does)")
    return found


def wait_tcp(port: int, what: str, timeout: float = 10.0, alive: Callable[[], bool] | None = None) -> None:
    """Until something accepts TCP connections on 127.0.0.1:`port`; at once when `alive` says the process
    that should listen is gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if alive is not None and not alive():
                break
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on TCP {port}")


def stop(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not go within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kill(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL, and reap it."""
    if proc is not None:
        proc.kill()
        proc.wait()
