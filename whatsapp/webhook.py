"""Webhook receiver (SPEC §7): verification handshake and signed notifications, on aiohttp.

The POST answers 200 only after `on_notification` returned — i.e. after the gateway committed every
status in it — so Meta retries whatever was not acknowledged.

Every input is total (DESIGN habit 15): whatever the query, headers and body, the answer is a named
refusal — 403 (verification refused), 400 (a challenge that cannot be echoed, a body that is not a
notification or that broke off), 401 (signature missing or wrong), 408 (a body that did not arrive in
time), 413 (too large) — or what the gateway made of the notification. Secrets are compared as bytes in
constant time: a header or query value is whatever bytes the client sent, never an encoding error.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http import HttpProcessingError
from pydantic import ValidationError

from .models import Notification

log = logging.getLogger("telgate.whatsapp.webhook")
MAX_STATUSES = 1000
# what the handshake echoes back: Meta sends a number; anything printable in ASCII is echoed, nothing else
_CHALLENGE = re.compile(r"[ -~]{0,1024}")

Handler = Callable[[Notification], Awaitable[None]]
Counter = Callable[[str], None]


def raw(text: str) -> bytes:
    """A header or query value as bytes, whatever it holds: aiohttp decodes header bytes as UTF-8 with
    surrogateescape, so a value that was not UTF-8 holds lone surrogates; `surrogatepass` encodes every
    str (never raises), and a value that differs from the expected one stays different."""
    return text.encode("utf-8", "surrogatepass")


def signature(app_secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(app_secret, body, hashlib.sha256).hexdigest()


def signature_ok(app_secret: bytes, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(signature(app_secret, body).encode(), raw(header.strip()))


def routes(
    path: str,
    app_secret: bytes,
    verify_token: str,
    max_body_bytes: int,
    on_notification: Handler,
    count: Counter = lambda result: None,
    read_timeout_s: float = 30.0,
) -> list[web.RouteDef]:
    expected_token = raw(verify_token)

    async def verify(request: web.Request) -> web.Response:
        q = request.query
        token = q.get("hub.verify_token")
        if q.get("hub.mode") != "subscribe" or token is None or not hmac.compare_digest(raw(token), expected_token):
            count("verify_refused")
            return web.Response(status=403, text="verification refused\n")
        challenge = q.get("hub.challenge", "")
        if not _CHALLENGE.fullmatch(challenge):
            count("verify_refused")
            return web.Response(status=400, text="hub.challenge: printable ASCII, at most 1024 characters\n")
        count("verified")
        return web.Response(text=challenge, content_type="text/plain")

    async def notify(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > max_body_bytes:
            count("too_large")
            return _closing(web.Response(status=413, text="body too large\n"))
        try:
            async with asyncio.timeout(read_timeout_s):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            count("too_large")
            return _closing(web.Response(status=413, text="body too large\n"))
        except TimeoutError:
            count("read_timeout")
            return _closing(web.Response(status=408, text="body not received in time\n"))
        except (web.RequestPayloadError, HttpProcessingError):  # broken chunking, a bad Content-Encoding
            count("bad_payload")
            return _closing(web.Response(status=400, text="body could not be read\n"))
        if not signature_ok(app_secret, body, request.headers.get("X-Hub-Signature-256")):
            count("bad_signature")
            return web.Response(status=401, text="bad signature\n")
        try:
            note = Notification.model_validate_json(body)
        except ValidationError as exc:
            count("bad_payload")
            return web.Response(status=400, text=f"not a notification: {_first_error(exc)}\n")
        if len(note.statuses()) > MAX_STATUSES:
            count("too_many")
            return web.Response(status=413, text=f"more than {MAX_STATUSES} statuses\n")
        await on_notification(note)
        count("accepted")
        return web.Response(text="ok\n")

    return [web.get(path, verify), web.post(path, notify)]


def _closing(response: web.Response) -> web.Response:
    """A refusal after which the rest of the body is not read: the connection closes with it."""
    response.force_close()
    return response


def _first_error(exc: ValidationError) -> str:
    """Where and what, without the input (the body is the client's: it is not echoed)."""
    err = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else str(err["msg"])
