"""InfluxDB line protocol and the writer that ships it (SPEC §8), for InfluxDB 1.x `/write` and 2.x
`/api/v2/write`.

Encoding (https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_reference/):
- measurement: `,` and space escaped with a backslash; tag keys, tag values, field keys: `,` `=` and
  space escaped. Line protocol cannot carry a backslash that precedes a delimiter or ends a value, nor a
  line break anywhere, so in those names a backslash is written as `/` and CR/LF/tab as a space (telgate's
  own tags are ids without either); NUL characters are left out. Empty tag values are left out (InfluxDB refuses them).
- fields: `int` → `123i`, `float` → shortest repr (NaN and infinities are left out: InfluxDB refuses
  them), `bool` → true/false, `str` → double-quoted with `"` and `\\` escaped (line breaks → space).
- timestamps in milliseconds (`precision=ms`).

The writer never blocks the loop or the engine: a snapshot of the recorder is taken every `interval_s`
and appended to a bounded buffer; batches of at most 5,000 lines are gzipped (in a thread) and POSTed.
A failed write (connection error, timeout, 5xx, 429) is retried with exponential backoff (1 s … 60 s)
and only delays the points; what overflows the buffer is dropped, oldest first, and counted. A 4xx
other than 429 means the batch itself is refused: it is dropped and counted, and the writer goes on.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

log = logging.getLogger("telgate.influx")

BATCH_LINES = 5000
Field = int | float | bool | str


@dataclass(frozen=True, slots=True)
class Point:
    measurement: str
    tags: Mapping[str, str]
    fields: Mapping[str, Field]
    time_ms: int


def _name(text: str, specials: str) -> str:
    text = text.replace("\\", "/").replace("\r", " ").replace("\n", " ").replace("\t", " ").replace("\0", "")
    for ch in specials:
        text = text.replace(ch, "\\" + ch)
    return text


def escape_measurement(name: str) -> str:
    return _name(name, ", ")


def escape_key(text: str) -> str:
    """A tag key, tag value or field key."""
    return _name(text, ",= ")


def field_value(value: Field) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else repr(value)
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ").replace("\0", "")
    return f'"{text}"'


def encode(point: Point) -> str | None:
    """One line; None when the point has no field InfluxDB would take."""
    fields = [f"{escape_key(k)}={v}" for k, raw in point.fields.items() if k and (v := field_value(raw)) is not None]
    if not fields:
        return None
    tags = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(point.tags.items()) if k and v)
    return f"{escape_measurement(point.measurement)}{tags} {','.join(fields)} {point.time_ms}"


@dataclass
class InfluxTarget:
    """Where and how to write: the URL and query of `/write` (v1) or `/api/v2/write` (v2)."""

    url: str
    api: str = "v1"
    database: str = "telgate"
    bucket: str = "telgate"
    org: str = ""
    token: str | None = None
    username: str | None = None
    password: str | None = None
    retention_policy: str | None = None

    def endpoint(self) -> tuple[str, dict[str, str], dict[str, str]]:
        base = self.url.rstrip("/")
        headers = {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"}
        if self.api == "v2":
            params = {"org": self.org, "bucket": self.bucket, "precision": "ms"}
            if self.token:
                headers["Authorization"] = f"Token {self.token}"
            return f"{base}/api/v2/write", params, headers
        params = {"db": self.database, "precision": "ms"}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        if self.username:
            params["u"] = self.username
            params["p"] = self.password or ""
        return f"{base}/write", params, headers


@dataclass
class WriterStats:
    written_lines: int = 0
    dropped_lines: int = 0  # buffer overflow
    refused_lines: int = 0  # a 4xx for the batch
    failed_writes: int = 0  # retried later
    last_error: str | None = None


@dataclass
class InfluxWriter:
    target: InfluxTarget
    snapshot: Callable[[int], list[Point]]
    interval_s: float = 10.0
    max_buffer_lines: int = 100_000
    timeout_s: float = 10.0
    stats: WriterStats = field(default_factory=WriterStats)
    _buffer: deque[str] = field(default_factory=deque)
    _backoff_s: float = 0.0
    _retry_at: float = 0.0

    def collect(self, now_ms: int | None = None) -> None:
        """Take a snapshot into the buffer (the oldest lines go when it is full)."""
        stamp = int(time.time() * 1000) if now_ms is None else now_ms
        for point in self.snapshot(stamp):
            line = encode(point)
            if line is None:
                continue
            if len(self._buffer) >= self.max_buffer_lines:
                self._buffer.popleft()
                self.stats.dropped_lines += 1
            self._buffer.append(line)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self, session: aiohttp.ClientSession) -> bool:
        """Write what is buffered, batch by batch; False when a write failed and will be retried."""
        url, params, headers = self.target.endpoint()
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(BATCH_LINES, len(self._buffer)))]
            body = await asyncio.to_thread(gzip.compress, ("\n".join(batch) + "\n").encode(), 5)
            try:
                async with session.post(
                    url, params=params, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
                ) as resp:
                    status = resp.status
                    text = (await resp.text())[:300] if status >= 300 else ""
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self._failed(f"{type(exc).__name__}: {exc}")
                return False
            if status < 300:
                self.stats.written_lines += len(batch)
            elif status == 429 or status >= 500:
                self._failed(f"HTTP {status} {text}")
                return False
            else:
                self.stats.refused_lines += len(batch)
                self.stats.last_error = f"HTTP {status} {text}"
                log.error("influx refused a batch; dropped", extra={"status": status, "why": text})
            for _ in batch:
                self._buffer.popleft()
            self._backoff_s = 0.0
        return True

    def _failed(self, why: str) -> None:
        self.stats.failed_writes += 1
        self.stats.last_error = why
        self._backoff_s = min(60.0, max(1.0, self._backoff_s * 2))
        self._retry_at = time.monotonic() + self._backoff_s
        log.warning("influx write failed; points kept", extra={"why": why, "retry_in_s": self._backoff_s})

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            try:
                while True:
                    self.collect()
                    if time.monotonic() >= self._retry_at:
                        await self.flush(session)
                    await asyncio.sleep(self.interval_s)
            finally:
                if time.monotonic() >= self._retry_at:
                    self.collect()
                    async with asyncio.timeout(3):
                        await self.flush(session)  # one last try on the way out
