"""Hostile HTTP (issue 21, SPEC §7): whatever a client sends to a listener — headers of any bytes, hub.*
query values, bodies signed and unsigned, of any shape — the real aiohttp server of a running gateway
answers it below 500, logs no error for it, and still takes a valid signed webhook afterwards. A client
cannot hold a listener: slow heads are closed, slow bodies get 408, requests beyond the cap get 503. A
fault of the gateway itself gets 500, logged once with the traceback masked and nothing of it in the body.

The requests are written byte by byte on a socket (an HTTP client library would refuse to send most of
them); the fuzz runs on a thread so that the gateway's loop serves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.service.http import build_app, runner
from tests.support.broker import Mosquitto
from tests.support.harness import backend
from tests.support.wa import SECRET, VERIFY, send, wa_ledger, wa_rig
from whatsapp.errors import is_account_level
from whatsapp.webhook import signature

pytestmark = pytest.mark.integration
TOKEN = "admin-token-for-the-fuzz-0123456789"
HOOK = b"/webhooks/whatsapp"


def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send `data` as is; the status, headers and body of the answer (status 0: closed without one). The
    answer ends at its Content-Length: after refusing a body, aiohttp reads what still comes for a while."""
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        with contextlib.suppress(OSError):  # the server answered early (413) and closed: the answer is there
            sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            while not _complete(raw) and (chunk := sock.recv(65536)):
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1."):
        return 0, {}, raw
    return int(lines[0].split()[1]), _headers(lines[1:]), body


def _headers(lines: list[bytes]) -> dict[str, str]:
    out = {}
    for line in lines:
        name, _, value = line.partition(b":")
        out[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    return out


def _complete(raw: bytes) -> bool:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = _headers(head.split(b"\r\n")[1:]).get("content-length")
    return length is not None and len(body) >= int(length)


def request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"", length: bool = True
) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if length and (body or method == b"POST"):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def signed(body: bytes) -> bytes:
    return signature(SECRET.encode(), body).encode()


def notification(statuses: list[dict[str, Any]]) -> bytes:
    value = {"messaging_product": "whatsapp", "statuses": statuses}
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }
    return json.dumps(doc).encode()


# -- strategies: what a client can put in each place ------------------------------------------------------
_line_bytes = st.binary(max_size=48).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_text = st.text(max_size=24)  # lone surrogates included
_text_bytes = _text.map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b""))
header_value = st.one_of(_line_bytes, _text_bytes, st.sampled_from([b"", b"sha256=", b"sha256=" + b"0" * 64]))
query_value = st.one_of(
    st.sampled_from([b"subscribe", VERIFY.encode(), b"1158201444", b""]),
    _text_bytes.map(quote_from_bytes).map(str.encode),  # percent-encoded bytes of any text
    st.binary(max_size=16).map(quote_from_bytes).map(str.encode),  # percent-encoded non-UTF-8
    _line_bytes.map(lambda b: b.replace(b" ", b"").replace(b"&", b"").replace(b"#", b"")),  # raw bytes
)
_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _text)
json_any = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


_callback = st.one_of(
    _text,
    st.builds("{}/{}/{}".format, _text, _text, st.one_of(st.integers(-3, 10**6), _text)),
    st.sampled_from(["wa/k0/1", "wa/k0/2", "wa/k0/0", "wa/k0/1/x"]),  # a live contact
)
_api_error = st.fixed_dictionaries(
    {},
    optional={
        # not the account-level codes: signed, those pause every campaign (and log an error), as they should
        "code": st.one_of(st.integers(), st.sampled_from([131026, 131049, 130429, 131000, 100, 4])).filter(
            lambda code: not is_account_level(code)
        ),
        "title": _text,
        "message": _text,
        "error_data": st.fixed_dictionaries({}, optional={"details": _text}),
    },
)
_status = st.fixed_dictionaries(
    {
        "id": st.one_of(_text, st.just("wamid.fuzz")),
        "status": st.one_of(st.sampled_from(["sent", "delivered", "read", "played", "failed", "deleted"]), _text),
    },
    optional={
        "timestamp": st.one_of(_text, st.integers(), st.floats()),
        "recipient_id": _text,
        "biz_opaque_callback_data": _callback,
        "errors": st.lists(_api_error, max_size=2),
        "conversation": json_any,
    },
)
_shaped = st.builds(
    lambda statuses, errors, messages: {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {"field": "messages", "value": {"statuses": statuses, "errors": errors, "messages": messages}}
                ],
            }
        ],
    },
    st.lists(_status, max_size=3),
    st.lists(_api_error, max_size=2),
    st.lists(json_any, max_size=2),
)


def _dump(doc: Any, ascii_only: bool) -> bytes:
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


body_bytes = st.one_of(
    st.binary(max_size=256),
    st.builds(_dump, json_any, st.booleans()),
    st.builds(_dump, _shaped, st.booleans()),
    st.integers(1, 5000).map(lambda n: b'{"entry":' + b"[" * n + b"]" * n + b"}"),  # deep nesting
    st.sampled_from(
        [b"", b"{}", b"null", b"[]", b'{"entry": 1e999}', b'{"entry": NaN}', b'{"a":1,"a":2}', b"\xef\xbb\xbf{}"]
    ),
)
other_paths = st.one_of(
    st.sampled_from(
        [b"/healthz", b"/readyz", b"/metrics", b"/v1/campaigns/wa/contacts/k1", b"/", b"/webhooks/whatsapp/"]
    ),
    _line_bytes.map(lambda b: b"/" + quote_from_bytes(b).encode()),
)
# most requests go to the webhook, most of them POSTs: that is where a body is read and handled
paths = st.one_of(st.just(HOOK), st.just(HOOK), st.just(HOOK), other_paths)
methods = st.one_of(st.just(b"POST"), st.just(b"POST"), st.sampled_from([b"GET", b"PUT", b"HEAD", b"DELETE"]))
bodies = st.one_of(body_bytes, st.builds(_dump, _shaped, st.booleans()), st.builds(_dump, _shaped, st.booleans()))


@contextmanager
def errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Every record at error level or above while the block runs, from any logger."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Keep(logging.ERROR)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield seen
    finally:
        root.removeHandler(handler)


@pytest.mark.both_stores
async def test_fuzzed_headers_queries_and_bodies_get_4xx_and_the_gateway_goes_on(
    broker: Mosquitto, tmp_path: Path
) -> None:
    sections = {"http": {"api_token": TOKEN, "max_body_bytes": 64 * 1024, "read_timeout_s": 5}}
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, sections=sections) as (app, standin):
        port = app.http_port
        assert port is not None
        await b.send("send", send("before-fuzz", "k0", "420601000061"))  # a live contact the bodies may name
        await b.wait_for(lambda: b.statuses("wa", "k0")[-1:] == ["read"], timeout=20)
        answered: list[int] = []

        def answer(data: bytes) -> int:
            status, _, body = exchange(port, data)
            assert 0 < status < 500, (status, body[:300])
            assert b"Traceback" not in body
            answered.append(status)
            return status

        # anything anywhere: methods, paths, hub.* queries, headers of any bytes, bodies signed or not
        @settings(max_examples=120, deadline=None, print_blob=True, suppress_health_check=list(HealthCheck))
        @given(
            method=methods,
            path=paths,
            query=st.dictionaries(
                st.sampled_from([b"hub.mode", b"hub.verify_token", b"hub.challenge", b"hub.other"]),
                query_value,
                max_size=3,
            ),
            body=bodies,
            sign=st.booleans(),
            headers=st.dictionaries(
                st.sampled_from(
                    [
                        b"X-Hub-Signature-256",
                        b"Authorization",
                        b"Content-Type",
                        b"Content-Encoding",
                        b"Expect",
                        b"X-Other",
                    ]
                ),
                header_value,
                max_size=4,
            ),
            bearer=st.sampled_from(
                [None, TOKEN.encode(), b"Bearer " + TOKEN.encode(), b"Bearer \xff" + TOKEN.encode()]
            ),
        )
        def anything(
            method: bytes,
            path: bytes,
            query: dict[bytes, bytes],
            body: bytes,
            sign: bool,
            headers: dict[bytes, bytes],
            bearer: bytes | None,
        ) -> None:
            target = path + (b"?" + b"&".join(k + b"=" + v for k, v in query.items()) if query else b"")
            hdrs = dict(headers)
            if sign:
                hdrs[b"X-Hub-Signature-256"] = signed(body)
            if bearer is not None:
                hdrs[b"Authorization"] = bearer
            answer(request(method, target, list(hdrs.items()), body))

        # well-framed webhook POSTs whose bodies reach the parser and, signed, the gateway's handling
        @settings(max_examples=120, deadline=None, print_blob=True, suppress_health_check=list(HealthCheck))
        @given(
            body=bodies,
            sign=st.sampled_from([True, True, True, False]),
            content_type=st.sampled_from([b"application/json", b"text/plain", b"application/json; charset=latin-1"]),
        )
        def webhook(body: bytes, sign: bool, content_type: bytes) -> None:
            hdrs = [(b"Content-Type", content_type)]
            if sign:
                hdrs.append((b"X-Hub-Signature-256", signed(body)))
            status = answer(request(b"POST", HOOK, hdrs, body))
            assert sign or status == 401, "an unsigned body is refused before it is read as JSON"

        with errors_logged() as errors:
            await asyncio.to_thread(anything)
            await asyncio.to_thread(webhook)
        assert not errors, [(r.name, r.getMessage()) for r in errors[:3]]
        assert {200, 400, 401, 404}.issubset(answered), f"the fuzz reached few answers: {sorted(set(answered))}"
        # what a text column may refuse (PostgreSQL: NUL), signed, in every field the gateway looks up
        nul = {
            "id": "wamid.\u0000",
            "status": "sent\u0000",
            "recipient_id": "\u0000",
            "biz_opaque_callback_data": "wa/k\u0000/1",
        }
        for status in (
            nul,
            {**nul, "status": "delivered"},
            {**nul, "id": "wamid.y", "biz_opaque_callback_data": "wa/k0\u0000/1"},
        ):
            hook = notification([status])
            data = request(b"POST", HOOK, [(b"X-Hub-Signature-256", signed(hook))], hook)
            assert (await asyncio.to_thread(exchange, port, data))[0] < 500, status

        # the gateway is alive and takes what is valid: a handshake, a signed webhook, a whole send
        good = request(
            b"GET", HOOK + b"?hub.mode=subscribe&hub.verify_token=" + VERIFY.encode() + b"&hub.challenge=42", []
        )
        assert (await asyncio.to_thread(exchange, port, good))[::2] == (200, b"42")
        hook = notification([{"id": "wamid.unknown", "status": "delivered", "timestamp": "1700000000"}])
        assert (
            await asyncio.to_thread(
                exchange, port, request(b"POST", HOOK, [(b"X-Hub-Signature-256", signed(hook))], hook)
            )
        )[0] == 200
        assert (await asyncio.to_thread(exchange, port, request(b"GET", b"/healthz", [])))[0] == 200
        await b.send("send", send("after-fuzz", "k1", "420601000060"))
        await b.wait_for(lambda: b.statuses("wa", "k1")[-1:] == ["read"], timeout=20)
        seen = await wa_ledger(b, standin)
        assert seen.compared == 2 and seen.wire == seen.attempts, seen  # k0 and k1: no send the bodies caused


async def test_a_callback_attempt_that_is_no_number_is_not_a_500(broker: Mosquitto, tmp_path: Path) -> None:
    async with wa_rig(broker.url, tmp_path) as (app, _):
        port = app.http_port
        assert port is not None
        for attempt in ("²", "9" * 5000):
            hook = notification([{"id": "wamid.x", "status": "sent", "biz_opaque_callback_data": f"wa/k0/{attempt}"}])
            data = request(b"POST", HOOK, [(b"X-Hub-Signature-256", signed(hook))], hook)
            assert (await asyncio.to_thread(exchange, port, data))[0] == 200, attempt


async def test_known_bad_inputs_get_their_4xx(broker: Mosquitto, tmp_path: Path) -> None:
    """The cases the issue names, one by one, with the answer each gets."""
    sections = {"http": {"api_token": TOKEN, "max_body_bytes": 4096}}
    async with wa_rig(broker.url, tmp_path, sections=sections) as (app, _):
        port = app.http_port
        assert port is not None
        verify = HOOK + b"?hub.mode=subscribe&hub.challenge=7&hub.verify_token="
        body = notification([])
        cases: list[tuple[str, bytes, int]] = [
            ("non-ASCII hub.verify_token", request(b"GET", verify + b"%C3%A9t%C3%A9", []), 403),
            ("non-UTF-8 hub.verify_token", request(b"GET", verify + b"%FF%FE", []), 403),
            ("raw non-ASCII bytes in the target", request(b"GET", verify + b"\xc3\xa9", []), 400),
            ("no hub.verify_token", request(b"GET", HOOK + b"?hub.mode=subscribe&hub.challenge=7", []), 403),
            (
                "a challenge that is not text",
                request(b"GET", verify.replace(b"=7", b"=%ED%A0%80") + VERIFY.encode(), []),
                400,
            ),
            ("non-UTF-8 signature", request(b"POST", HOOK, [(b"X-Hub-Signature-256", b"sha256=\xff\xfe")], body), 401),
            ("non-ASCII signature", request(b"POST", HOOK, [(b"X-Hub-Signature-256", "sha256=é".encode())], body), 401),
            ("no signature", request(b"POST", HOOK, [], body), 401),
            ("non-UTF-8 bearer", request(b"GET", b"/metrics", [(b"Authorization", b"Bearer \xff\xfe")]), 401),
            ("non-ASCII bearer", request(b"GET", b"/readyz", [(b"Authorization", "Bearer é".encode())]), 401),
            ("not JSON", request(b"POST", HOOK, [(b"X-Hub-Signature-256", signed(b"{nope"))], b"{nope"), 400),
            ("not an object", request(b"POST", HOOK, [(b"X-Hub-Signature-256", signed(b"[1]"))], b"[1]"), 400),
            (
                "wrong shape",
                request(b"POST", HOOK, [(b"X-Hub-Signature-256", signed(b'{"entry":7}'))], b'{"entry":7}'),
                400,
            ),
            (
                "too deep",
                request(b"POST", HOOK, [(b"X-Hub-Signature-256", signed(deep := b"[" * 1000 + b"]" * 1000))], deep),
                400,
            ),
            ("too large", request(b"POST", HOOK, [], b"x" * 5000), 413),
            (
                "too large, announced",
                request(b"POST", HOOK, [(b"Content-Length", b"99999999")], b"", length=False),
                413,
            ),
            ("not gzip", request(b"POST", HOOK, [(b"Content-Encoding", b"gzip")], body), 400),
            (
                "broken chunks",
                request(b"POST", HOOK, [(b"Transfer-Encoding", b"chunked")], b"zz\r\n", length=False),
                400,
            ),
            ("a header line that is not one", request(b"GET", b"/healthz", [(b"Bad Header", b"")]), 400),
            ("NUL in a header", request(b"GET", b"/healthz", [(b"X-A", b"a\x00b")]), 400),
        ]
        with errors_logged() as errors:
            got = {name: (await asyncio.to_thread(exchange, port, data))[0] for name, data, _ in cases}
        assert got == {name: status for name, _, status in cases}
        assert not errors, [(r.name, r.getMessage()) for r in errors[:3]]


async def test_a_client_cannot_hold_a_listener(broker: Mosquitto, tmp_path: Path) -> None:
    """Slow heads are closed after idle_timeout_s, slow bodies answered 408 after read_timeout_s, and beyond
    max_concurrent_requests in progress the listener answers 503 with Retry-After (/healthz still 200)."""
    sections = {"http": {"idle_timeout_s": 1, "read_timeout_s": 1.5, "max_concurrent_requests": 2}}
    async with wa_rig(broker.url, tmp_path, sections=sections) as (app, _):
        port = app.http_port
        assert port is not None
        started = time.monotonic()
        status, _, _ = await asyncio.to_thread(exchange, port, b"GET /healthz HTTP/1.1\r\nHo")  # never finished
        assert status == 0 and time.monotonic() - started < 5, "a slow head is closed"

        slow = request(b"POST", HOOK, [(b"Content-Length", b"100")], b'{"entry":', length=False)
        holders = [asyncio.create_task(asyncio.to_thread(exchange, port, slow)) for _ in range(2)]
        busy = None
        deadline = time.monotonic() + 1.4
        while time.monotonic() < deadline:  # until both slow bodies hold their slot
            busy = await asyncio.to_thread(exchange, port, request(b"GET", HOOK, []))
            if busy[0] == 503:
                break
        assert busy is not None and busy[0] == 503 and busy[1].get("retry-after") == "1", busy
        assert (await asyncio.to_thread(exchange, port, request(b"GET", b"/healthz", [])))[0] == 200
        assert [(await h)[0] for h in holders] == [408, 408], "slow bodies are answered 408"
        assert (await asyncio.to_thread(exchange, port, request(b"GET", HOOK, [])))[0] == 403, "free again"


async def test_a_fault_of_the_gateway_is_500_logged_once_and_masked() -> None:
    """On the same server wiring the gateway uses (build_app, runner): a route that raises."""

    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("no contact for +420601234567 (wa_id 420601234567)")

    app = build_app(None, None, lambda: {}, 4096, [web.post("/boom", broken)], admin=False)  # type: ignore[arg-type]
    run = runner(app, 5)
    await run.setup()
    site = web.TCPSite(run, "127.0.0.1", 0)
    await site.start()
    try:
        port = int(run.addresses[0][1])
        with errors_logged() as errors:
            status, _, body = await asyncio.to_thread(exchange, port, request(b"POST", b"/boom", [], b"{}"))
        assert status == 500 and body == b"internal error\n"
        assert len(errors) == 1 and errors[0].name == "telgate.http", [(r.name, r.getMessage()) for r in errors]
        exc = errors[0].__dict__["exc"]
        assert "RuntimeError" in exc and "+420******567" in exc and "601234567" not in exc
        assert errors[0].exc_info is None, "the traceback goes masked, in `exc`"
        assert (await asyncio.to_thread(exchange, port, request(b"GET", b"/healthz", [])))[0] == 200
    finally:
        await run.cleanup()
