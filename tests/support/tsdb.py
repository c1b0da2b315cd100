"""Prometheus and InfluxDB 1.x servers (Debian `prometheus`, `influxdb`) started by a test on free ports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .broker import free_port
from .procs import binary, stop


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_http(url: str, log: Path, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up; log:\n{log.read_text(errors='replace')[-2000:]}")


class Prometheus:
    def __init__(
        self, workdir: Path, target: str | list[str], rule_files: list[Path], scrape_interval: str = "1s"
    ) -> None:
        self.binary = binary("prometheus", "prometheus")
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        targets = [target] if isinstance(target, str) else target
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "telgate", "static_configs": [{"targets": targets}]}],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        cmd = [
            self.binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir)
        _wait_http(f"{self.url}/-/ready", self.log, "prometheus")
        return self

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        if data.get("status") != "success":
            raise AssertionError(f"{expr}: {data}")
        return list(data["data"]["result"])

    async def until(self, expr: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """`query` every 0.5 s until it has a result or `timeout` passes (then the empty result)."""
        deadline = time.monotonic() + timeout
        while True:
            result = await asyncio.to_thread(self.query, expr)
            if result or time.monotonic() > deadline:
                return result
            await asyncio.sleep(0.5)

    def targets_up(self) -> bool:
        data = _get(f"{self.url}/api/v1/targets")
        return any(t.get("health") == "up" for t in data["data"]["activeTargets"])

    def __exit__(self, *exc: object) -> None:
        stop(self.proc, 10)


class InfluxDB:
    """influxd 1.x with its own meta/data/wal folders and HTTP on a free port; `stop`/`start` for outages."""

    def __init__(self, workdir: Path, database: str = "telgate") -> None:
        self.binary = binary("influxd", "influxdb")
        self.port = free_port()
        self.workdir = workdir
        self.database = database
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "influxdb.conf"
        self.config.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "127.0.0.1:{free_port()}"\n'
            f'[meta]\n  dir = "{workdir / "meta"}"\n'
            f'[data]\n  dir = "{workdir / "data"}"\n  wal-dir = "{workdir / "wal"}"\n  query-log-enabled = false\n'
            f'[http]\n  bind-address = "127.0.0.1:{self.port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
        )
        self.log = workdir / "influxd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-config", str(self.config)], stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        _wait_http(f"{self.url}/ping", self.log, "influxd")
        self.query(f'CREATE DATABASE "{self.database}"', db=None)

    def stop(self) -> None:
        stop(self.proc, 10)

    def query(self, q: str, db: str | None = "telgate") -> dict[str, Any]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        req = urllib.request.Request(f"{self.url}/query", data=urllib.parse.urlencode(params).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def series(self, q: str) -> list[dict[str, Any]]:
        result = self.query(q)["results"][0]
        if "error" in result:
            raise AssertionError(f"{q}: {result['error']}")
        return list(result.get("series", []))

    def __enter__(self) -> InfluxDB:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
