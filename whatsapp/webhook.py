"""Webhook receiver (SPEC §7): verification handshake and signed notifications, on aiohttp.

The POST answers 200 only after `on_notification` returned — i.e. after the gateway committed every
status in it — so Meta retries whatever was not acknowledged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import ValidationError

from .models import Notification

log = logging.getLogger("telgate.whatsapp.webhook")
MAX_STATUSES = 1000

Handler = Callable[[Notification], Awaitable[None]]
Counter = Callable[[str], None]


def signature(app_secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret, body, hashlib.sha256).hexdigest()


def signature_ok(app_secret: bytes, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(signature(app_secret, body).encode(), header.strip().encode())


def routes(
    path: str,
    app_secret: bytes,
    verify_token: str,
    max_body_bytes: int,
    on_notification: Handler,
    count: Counter = lambda result: None,
) -> list[web.RouteDef]:
    async def verify(request: web.Request) -> web.Response:
        q = request.query
        if q.get("hub.mode") == "subscribe" and hmac.compare_digest(q.get("hub.verify_token", ""), verify_token):
            count("verified")
            return web.Response(text=q.get("hub.challenge", ""), content_type="text/plain")
        count("verify_refused")
        return web.Response(status=403, text="verification refused\n")

    async def notify(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > max_body_bytes:
            count("too_large")
            return web.Response(status=413, text="body too large\n")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            count("too_large")
            return web.Response(status=413, text="body too large\n")
        if not signature_ok(app_secret, body, request.headers.get("X-Hub-Signature-256")):
            count("bad_signature")
            return web.Response(status=401, text="bad signature\n")
        try:
            note = Notification.model_validate_json(body)
        except ValidationError as exc:
            count("bad_payload")
            return web.Response(status=400, text=f"not a notification: {exc.errors()[0]['msg']}\n")
        if len(note.statuses()) > MAX_STATUSES:
            count("too_many")
            return web.Response(status=413, text=f"more than {MAX_STATUSES} statuses\n")
        await on_notification(note)
        count("accepted")
        return web.Response(text="ok\n")

    return [web.get(path, verify), web.post(path, notify)]
