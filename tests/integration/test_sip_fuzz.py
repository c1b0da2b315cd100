"""A real gateway process under hostile SIP (issue 21), over UDP and over TCP.

The gateway (`python -m gateway run`) has SIPp as its PBX. Mutated messages built from
`../shared/corpora/sip/` (tests/support/sipfuzz.py) go to its SIP port: each malformed request is answered
400/505/513 or dropped, never with more than one response on the wire, and over TCP a stream that cannot be
framed (garbage, an oversize Content-Length) is closed while other connections go on. Then: the process is
alive, logged no failure past the codec, answers an OPTIONS, and a valid predictive call with `connect_to`
goes through — SIPp's record (its message log) shows exactly that one INVITE and a REFER whose Refer-To is
the target, with no header anyone injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from tests.support import ledger, sipfuzz
from tests.support.broker import Mosquitto
from tests.support.harness import backend, store_toml
from tests.support.procs import wait_tcp
from tests.support.sipp import Sipp, free_udp_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
OPTIONS = sipfuzz.BASE
TARGET = "sip:agents@queue.example"


def _ask_udp(port: int, data: bytes, wait: float = 1.0) -> list[int]:
    """The statuses the gateway answered `data` with over UDP (one datagram, or none within `wait` s)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return [sipfuzz.status_of(s.recv(65536))]
        except TimeoutError:
            return []


def _tcp(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _read_until_closed(s: socket.socket, wait: float) -> tuple[bytes, bool]:
    """What the gateway wrote back within `wait` s, and whether it closed the connection."""
    s.settimeout(wait)
    got = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            got += chunk
        return got, True
    return got, False


def _replies(data: bytes) -> list[int]:
    out, rest = [], data
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        out.append(sipfuzz.status_of(head + sep))
        length = next((int(line[15:]) for line in head.split(b"\r\n") if line.startswith(b"Content-Length: ")), 0)
        rest = rest[length:]
    return out


def _ask_tcp(port: int, data: bytes, wait: float = 1.0) -> list[int]:
    """The statuses the gateway answered `data` with on a connection of its own, until one reply is in."""
    with _tcp(port) as s:
        s.sendall(data)
        got = b""
        s.settimeout(wait)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while b"\r\n\r\n" not in got and (chunk := s.recv(65536)):
                got += chunk
        return _replies(got)


def _config(tmp_path: Path, broker: Mosquitto, pbx: str, transport: str, port: int) -> Path:
    cfg = tmp_path / "telgate.toml"
    cfg.write_text(
        f'[gateway]\nid = "gw-fuzz"\ndata_dir = "{tmp_path / "gw"}"\n'
        f'[bus]\nurl = "{broker.url}"\nclient_id = "telgate-fuzz-{port}"\n[http]\nlisten = "127.0.0.1:0"\n'
        f'[sip]\npbx = "{pbx}"\ntransport = "{transport}"\nlocal = "127.0.0.1:{port}"\nring_timeout_s = 10\n'
        f"{store_toml()}"
    )
    return cfg


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_mutated_corpus_at_the_sip_port_then_a_call_goes_through(
    transport: str, broker: Mosquitto, tmp_path: Path
) -> None:
    if not (sipfuzz.SIP / "rfc4475").is_dir():
        pytest.skip("shared/corpora/sip is not beside this checkout")
    if shutil.which("sipp") is None:
        pytest.skip("sipp is not installed (apt-get install sip-tester)")
    started = time.monotonic()
    extra = ("-t", "t1") if transport == "tcp" else ()
    with Sipp("answer_refer_notify.xml", tmp_path / "sipp", extra=extra) as pbx:
        if transport == "tcp":
            await asyncio.to_thread(pbx.wait_listening)
        port = free_udp_port()
        log = tmp_path / "gateway.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(_config(tmp_path, broker, pbx.address, transport, port)),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            async with backend(broker.url) as b:
                await b.wait_for(lambda: b.presence.get("gw-fuzz") == "online", timeout=20)
                if transport == "tcp":
                    await asyncio.to_thread(wait_tcp, port, "the gateway's SIP listener")
                ask = _ask_tcp if transport == "tcp" else _ask_udp
                assert await asyncio.to_thread(ask, port, OPTIONS) == [200]

                if transport == "udp":
                    answered = await asyncio.to_thread(_fuzz_udp, port)
                else:
                    await asyncio.to_thread(_tcp_edges, port)
                    answered = await asyncio.to_thread(_fuzz_tcp, port)
                assert answered[400] > 0 and set(answered) <= {200, 400, 481, 501, 505, 513, 603}, answered

                assert proc.poll() is None, log.read_text()[-3000:]
                fresh = OPTIONS.replace(b"branch=z9hG4bKq", b"branch=z9hG4bKafter")
                assert await asyncio.to_thread(ask, port, fresh) == [200]  # still answering

                # predictive calls are paced by the gateway: no operators, no calls (docs/lawful-calling.md)
                await b.send("campaign", {"command_id": "c1", "campaign_id": "fz", "action": "start", "operators": 1})
                await b.send(
                    "dial",
                    {
                        "command_id": "d1",
                        "campaign_id": "fz",
                        "contact_id": "k",
                        "phone": "+420601234567",
                        "mode": "predictive",
                        "connect_to": TARGET,
                    },
                )
                await b.wait_for(lambda: b.final("fz", "k"), timeout=15)
                statuses = [e["status"] for e in b.unique("fz", "k")]
                assert statuses == ["initial", "calling", "awaiting_operator", "call_in_progress", "success"]
                seen = await ledger.check(b, "voice", ledger.sipp_invites(pbx))
                assert seen.compared == 1 and seen.attempts == 1 and seen.wire == 1
            received = [m for m in pbx.messages() if "message received" in m.split("\n", 1)[0]]
            (refer,) = [m for m in received if "\nREFER " in m]
            assert f"Refer-To: <{TARGET}>" in refer
            assert not any("x-evil" in m.lower() for m in received)  # nothing injected reached the PBX
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()[-3000:]
    failures = [line for line in _log_lines(log) if "logged once per kind" in line.get("msg", "")]
    assert failures == [], failures  # no exception got past the codec, the owner or a timer
    assert time.monotonic() - started < 30


def _log_lines(log: Path) -> list[dict[str, str]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _fuzz_udp(port: int) -> Counter[int]:
    """Hostile datagrams; the statuses of the replies that came back."""
    answered: Counter[int] = Counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.05)

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(sipfuzz.hostile())
        def fuzz(data: bytes) -> None:
            s.sendto(data[:65000], ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                while True:  # this reply, and any late one to an earlier datagram
                    answered[sipfuzz.status_of(s.recv(65536))] += 1  # one response, on lines of its own

        fuzz()
    return answered


def _fuzz_tcp(port: int) -> Counter[int]:
    """Hostile messages, each on a connection of its own; the statuses of the replies that came back."""
    answered: Counter[int] = Counter()

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(sipfuzz.hostile())
    def fuzz(data: bytes) -> None:
        with _tcp(port) as s:
            s.sendall(data)
            got, _closed = _read_until_closed(s, 0.1)
            answered.update(_replies(got))

    fuzz()
    return answered


def _tcp_edges(port: int) -> None:
    """Garbage and an oversize Content-Length close the connection at once; a peer stalled half way through
    a message holds nobody else up."""
    stalled = _tcp(port)
    stalled.sendall(OPTIONS[:40])  # and never the rest
    try:
        for data in (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",  # a TLS hello on the TCP port
            OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 99999999999"),
            OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 70000"),
            OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 12"),
            b"\x00" * 9000,
        ):
            with _tcp(port) as s:
                s.sendall(data)
                got, closed = _read_until_closed(s, 3.0)
                assert closed and got == b"", (data[:40], got[:80])
        with _tcp(port) as s:  # several messages on one connection, the bad one answered 400, the rest too
            bad = OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE").replace(b"branch=z9hG4bKq", b"branch=z9hG4bKb")
            s.sendall(OPTIONS.replace(b"branch=z9hG4bKq", b"branch=z9hG4bKa") + bad)
            got = b""
            s.settimeout(2.0)
            while got.count(b"\r\n\r\n") < 2:
                got += s.recv(65536)
            assert sorted(_replies(got)) == [200, 400]
    finally:
        stalled.close()
