"""HTTP (SPEC §7): health, readiness, metrics and the contact read API, and the webhook routes.

Two kinds of route. *Public*: `/healthz` and the webhooks, which a load balancer in front of several
instances exposes to Meta. *Admin*: `/readyz`, `/metrics` and the contact read API, which carry phone
numbers and event history. With `http.admin_listen` the admin routes are served on that listener only
(the public one answers 404 for them); with `http.api_token` they require `Authorization: Bearer
<token>` (compared in constant time; 401 otherwise), wherever they are served. Neither set: one
listener serves everything, as a single instance on loopback does.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from metrics.recorder import Recorder

from .store import Store
from .wire import ID_PATTERN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer(token: str | None) -> Callable[[Handler], Handler]:
    """Wrap a handler so that it answers 401 unless the request carries `Authorization: Bearer <token>`."""

    def wrap(handler: Handler) -> Handler:
        if token is None:
            return handler
        expected = f"Bearer {token}".encode()

        async def guarded(request: web.Request) -> web.StreamResponse:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    {"error": "unauthorized"}, status=401, headers={"WWW-Authenticate": 'Bearer realm="telgate"'}
                )
            return await handler(request)

        return guarded

    return wrap


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
) -> web.Application:
    """One aiohttp application with the public routes (`public`: /healthz and `extra_routes`, the
    webhooks), the admin routes (`admin`), or both; admin routes behind `api_token` when it is set."""
    app = web.Application(client_max_size=max_body_bytes)
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
        from .domain.statuses import is_final

        body["final"] = is_final(state.channel, state.status)
        return web.json_response(body)

    app.router.add_get("/healthz", healthz)
    if admin:
        app.router.add_get("/readyz", guard(readyz))
        app.router.add_get("/metrics", guard(metrics))
        app.router.add_get(f"/v1/campaigns/{{campaign_id:{id_re}}}/contacts/{{contact_id:{id_re}}}", guard(contact))
    if public and extra_routes:
        app.add_routes(extra_routes)
    return app
