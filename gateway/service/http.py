"""HTTP (SPEC §7): health, readiness, metrics and the contact read API, and the webhook routes.

Two kinds of route. *Public*: `/healthz` and the webhooks, which a load balancer in front of several
instances exposes to Meta. *Admin*: `/readyz`, `/metrics` and the contact read API, which carry phone
numbers and event history. With `http.admin_listen` the admin routes are served on that listener only
(the public one answers 404 for them); with `http.api_token` they require `Authorization: Bearer
<token>` (compared in constant time; 401 otherwise), wherever they are served. Neither set: one
listener serves everything, as a single instance on loopback does.

Hostile input (SPEC §7, DESIGN habit 15): every listener answers whatever a client sends with a status
below 500 — aiohttp's own 400 for what it cannot parse, 401/403/400/408/413 from the routes — and caps
what one client can hold: a request head must arrive within `http.idle_timeout_s` of the connection
opening (or of the previous response), a body within `http.read_timeout_s` (408), and beyond
`http.max_concurrent_requests` requests in progress a listener answers 503 with `Retry-After`. Only a
fault of the gateway itself answers 500: logged once, at error level, with its traceback masked; a
client's fault is never logged with a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from gateway.contract.wire import ID_PATTERN
from gateway.domain.phones import mask
from gateway.store import Store
from metrics.recorder import Recorder

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("telgate.http")
# the logger aiohttp's server (the connection handler) writes to: see ClientFaults
server_log = logging.getLogger("telgate.http.server")
# phone numbers in a traceback (an exception's message may quote a body or a key): with or without +
_DIGITS = re.compile(r"(?<![\w+])\+?\d{7,15}(?!\w)")


def bearer(token: str | None) -> Callable[[Handler], Handler]:
    """Wrap a handler so that it answers 401 unless the request carries `Authorization: Bearer <token>`."""

    def wrap(handler: Handler) -> Handler:
        if token is None:
            return handler
        expected = f"Bearer {token}".encode()

        async def guarded(request: web.Request) -> web.StreamResponse:
            # any bytes: a header that was not UTF-8 is a wrong token, not an encoding error
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="telgate"'}
                )
            return await handler(request)

        return guarded

    return wrap


def masked(text: str) -> str:
    """A traceback or a message for the log with every phone number in it masked (gateway/domain/phones.py)."""
    return _DIGITS.sub(lambda m: mask(m.group(0)), text)


def masked_traceback(exc: BaseException) -> str:
    return masked("".join(traceback.format_exception(exc)))


class ClientFaults(logging.Filter):
    """On the logger aiohttp's connection handler writes to (`server_log`). aiohttp logs a request it
    could not parse (bad framing, a header too long, bytes that are not HTTP) with its traceback at error
    level: that is the client's fault, and one line per such request would be a free log flood. It
    becomes a debug line without the traceback. Whatever else aiohttp logs with a traceback (a fault of
    its own or ours) keeps its level and gets the traceback masked, in the `exc` field."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info:
            return True
        exc = record.exc_info[1]
        if _client_fault(exc):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.msg = f"{record.msg}: %s"
            record.args = (*(record.args if isinstance(record.args, tuple) else ()), masked(str(exc)))
            record.exc_info, record.exc_text = None, None
            return server_log.isEnabledFor(logging.DEBUG)
        if exc is not None:
            record.exc = masked_traceback(exc)  # JsonFormatter writes the extra fields it finds
        record.exc_info, record.exc_text = None, None
        return True


def _client_fault(exc: BaseException | None) -> bool:
    """What aiohttp raises for bytes a client sent: a request it cannot parse (4xx), a body that breaks off
    or cannot be decoded (also when aiohttp reads the rest of a refused body before it closes)."""
    if isinstance(exc, HttpProcessingError):
        return 400 <= (exc.code or 400) < 500
    return isinstance(exc, web.RequestPayloadError)


if not any(isinstance(f, ClientFaults) for f in server_log.filters):
    server_log.addFilter(ClientFaults())


def edge(max_concurrent: int, read_timeout_s: float, max_body_bytes: int) -> Middleware:
    """What every request of one listener goes through: the cap on requests in progress (503 with
    Retry-After beyond it; /healthz is never refused, a load balancer's liveness probe must not fail
    because the gateway is busy), the body read in `read_timeout_s` (408) and within `max_body_bytes`
    (413), and the line between the client's faults (4xx, never logged with a traceback) and the
    gateway's (500, logged once with the traceback masked, nothing of it in the body)."""
    in_progress = 0

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_progress
        if in_progress >= max_concurrent and request.path != "/healthz":
            return web.Response(status=503, text="busy: try again\n", headers={"Retry-After": "1"})
        in_progress += 1
        try:
            refused = await _read_body(request, read_timeout_s, max_body_bytes)
            if refused is not None:
                return refused
            return await handler(request)
        except web.HTTPException:
            raise  # 404, 405, 413 …: aiohttp's answers, the client's faults
        except Exception as exc:  # a fault of the gateway: whatever the request was, it is answered
            log.error(
                "HTTP request failed",
                extra={"method": request.method, "path": masked(request.path), "exc": masked_traceback(exc)},
            )
            return web.Response(status=500, text="internal error\n")
        finally:
            in_progress -= 1

    return middleware


async def _read_body(request: web.Request, timeout_s: float, max_body_bytes: int) -> web.Response | None:
    """Read the body before the route sees it (aiohttp keeps it: the route's `read()` gets the same
    bytes): a refusal, or None when the body is there (or there is none)."""
    if not request.body_exists:
        return None
    refusal: web.Response | None = None
    if request.content_length is not None and request.content_length > max_body_bytes:
        refusal = web.Response(status=413, text="body too large\n")
    else:
        try:
            async with asyncio.timeout(timeout_s):
                await request.read()
        except TimeoutError:
            refusal = web.Response(status=408, text="body not received in time\n")
        except (web.RequestPayloadError, HttpProcessingError):  # broken chunking, a bad Content-Encoding
            refusal = web.Response(status=400, text="body could not be read\n")
    if refusal is not None:
        refusal.force_close()  # the rest of the body is not read
    return refusal


def runner(app: web.Application, idle_timeout_s: float) -> web.AppRunner:
    """The runner of one listener: no access log; a connection that has not sent a whole request head
    within `idle_timeout_s` of opening (or of its previous response) is closed — aiohttp's keep-alive
    timer, which also runs while a head is only partly there (slow headers); aiohttp's own log lines
    through `ClientFaults`."""
    return web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout_s, logger=server_log)


def build_app(
    store: Store,
    recorder: Recorder,
    readiness: Callable[[], dict[str, str]],
    max_body_bytes: int,
    extra_routes: list[web.RouteDef] | None = None,
    *,
    public: bool = True,
    admin: bool = True,
    api_token: str | None = None,
    max_concurrent: int = 256,
    read_timeout_s: float = 30.0,
) -> web.Application:
    """One aiohttp application with the public routes (`public`: /healthz and `extra_routes`, the
    webhooks), the admin routes (`admin`), or both; admin routes behind `api_token` when it is set."""
    app = web.Application(
        client_max_size=max_body_bytes, middlewares=[edge(max_concurrent, read_timeout_s, max_body_bytes)]
    )
    id_re = ID_PATTERN.strip("^$")
    guard = bearer(api_token)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        deps = readiness()
        ok = all(v in ("up", "open", "connected", "off") for v in deps.values())
        return web.json_response({"ready": ok, "dependencies": deps}, status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            body = generate_openmetrics(recorder.registry)  # type: ignore[no-untyped-call]
            ctype = OPENMETRICS_TYPE
        else:
            body = generate_latest(recorder.registry)
            ctype = CONTENT_TYPE_LATEST
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = ctype
        return resp

    async def contact(request: web.Request) -> web.Response:
        key = (request.match_info["campaign_id"], request.match_info["contact_id"])

        def read(txn: Any) -> tuple[Any, list[bytes]]:
            return txn.get_contact(key), txn.events(key)

        state, events = await store.read(read)
        if state is None:
            return web.json_response({"error": "unknown contact"}, status=404)
        body = {
            "campaign_id": key[0],
            "contact_id": key[1],
            "channel": state.channel,
            "status": state.status,
            "sequence": state.sequence,
            "attempt": state.attempt,
            "final": None,
            "wa_message_id": state.wamid,
            "events": [json.loads(e) for e in events],
        }
        from gateway.domain.statuses import is_final

        body["final"] = is_final(state.channel, state.status)
        return web.json_response(body)

    expect = expectation(max_body_bytes)
    app.router.add_get("/healthz", healthz, expect_handler=expect)
    if admin:
        app.router.add_get("/readyz", guard(readyz), expect_handler=expect)
        app.router.add_get("/metrics", guard(metrics), expect_handler=expect)
        app.router.add_get(
            f"/v1/campaigns/{{campaign_id:{id_re}}}/contacts/{{contact_id:{id_re}}}",
            guard(contact),
            expect_handler=expect,
        )
    if public and extra_routes:
        app.add_routes(
            [web.RouteDef(r.method, r.path, r.handler, {**r.kwargs, "expect_handler": expect}) for r in extra_routes]
        )
    add_unrouted(app, expect)
    return app


def expectation(max_body_bytes: int) -> Callable[[web.Request], Awaitable[None]]:
    """The `Expect` header's handler of every route (aiohttp runs it before any middleware). aiohttp's
    own quotes an unknown expectation in its 417 and fails to encode one that was not UTF-8 (a 500).
    `100-continue` is answered — after the announced length is checked (413 at once: the client sends
    nothing in vain) — and anything else gets 417."""

    async def expect(request: web.Request) -> None:
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="Expect: only 100-continue is understood\n")
        if request.content_length is not None and request.content_length > max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_body_bytes, actual_size=request.content_length)
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the response proper is still to come (as aiohttp's own does)

    return expect


def add_unrouted(app: web.Application, expect: Callable[[web.Request], Awaitable[None]]) -> None:
    """A last route that takes what no other one does, answering 404 or 405 as aiohttp would — so that
    every request, routed or not, goes through `expect` and the middlewares."""
    resource = app.router.add_resource("/{unrouted:.*}")

    async def unrouted(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for other in app.router.resources():
            if other is not resource:
                allowed |= (await other.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    resource.add_route("*", unrouted, expect_handler=expect)
