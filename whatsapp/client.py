"""Cloud API client: template sends on one pooled aiohttp session, results as typed values.

A timeout or connection error *before* the request was written is safe to retry; once its bytes went
out, Meta may have accepted the message, so a timeout after that is `TimedOut(written=True)`:
ambiguous, never resent blindly.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
from pydantic import ValidationError

from .errors import ErrorClass, classify
from .models import ErrorBody, SendResponse


@dataclass(frozen=True, slots=True)
class Accepted:
    wamid: str
    message_status: str | None
    http_status: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    error_class: ErrorClass
    code: int | None
    title: str
    details: str | None
    http_status: int | None
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class TimedOut:
    written: bool
    elapsed_s: float


SendResult = Accepted | Failed | TimedOut


class WhatsAppError(Exception):
    """A local fault of the client (misuse, closed session); remote faults are `Failed` results."""


async def _headers_sent(_s: aiohttp.ClientSession, ctx: SimpleNamespace, _p: Any) -> None:
    if ctx.trace_request_ctx is not None:
        ctx.trace_request_ctx.written = True


class CloudApiClient:
    def __init__(
        self,
        api_base: str,
        api_version: str,
        phone_number_id: str,
        access_token: str,
        request_timeout_s: float = 10.0,
        max_connections: int = 100,
    ) -> None:
        self.url = f"{api_base.rstrip('/')}/{api_version}/{phone_number_id}/messages"
        self._token = access_token
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CloudApiClient:
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_headers_sent)
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            trace_configs=[trace],
            connector=aiohttp.TCPConnector(limit=self._max_connections),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def template_body(to: str, template: dict[str, Any], callback_data: str) -> dict[str, Any]:
        language = template.get("language")
        tpl = {**template, "language": {"code": language} if isinstance(language, str) else language}
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to.lstrip("+"),
            "type": "template",
            "template": tpl,
            "biz_opaque_callback_data": callback_data,
        }

    async def send_template(self, to: str, template: dict[str, Any], callback_data: str) -> SendResult:
        if self._session is None:
            raise WhatsAppError("client is not open (use `async with`)")
        marker = SimpleNamespace(written=False)
        body = json.dumps(self.template_body(to, template, callback_data)).encode()
        started = time.monotonic()
        try:
            async with self._session.post(self.url, data=body, trace_request_ctx=marker) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return TimedOut(written=marker.written, elapsed_s=time.monotonic() - started)
        except aiohttp.ClientConnectorError as exc:  # never connected: nothing was written
            return Failed(
                ErrorClass.RETRYABLE, None, f"connect: {exc.os_error}", None, None, time.monotonic() - started
            )
        except (aiohttp.ClientError, OSError) as exc:
            if marker.written:
                return TimedOut(written=True, elapsed_s=time.monotonic() - started)
            return Failed(ErrorClass.RETRYABLE, None, f"transport: {exc!r}", None, None, time.monotonic() - started)
        elapsed = time.monotonic() - started
        return self._result(status, raw, elapsed)

    @staticmethod
    def _result(status: int, raw: bytes, elapsed: float) -> SendResult:
        if 200 <= status < 300:
            try:
                ok = SendResponse.model_validate_json(raw)
                return Accepted(ok.messages[0].id, ok.messages[0].message_status, status, elapsed)
            except (ValidationError, IndexError):
                return Failed(ErrorClass.RETRYABLE, None, "unreadable success response", None, status, elapsed)
        try:
            err = ErrorBody.model_validate_json(raw).error
        except ValidationError:
            return Failed(
                classify(None, status), None, f"HTTP {status}", raw[:200].decode("utf-8", "replace"), status, elapsed
            )
        details = err.error_data.details if err.error_data else None
        return Failed(classify(err.code, status), err.code, err.text, details, status, elapsed)


__all__ = ["Accepted", "CloudApiClient", "Failed", "SendResult", "TimedOut", "WhatsAppError", "asyncio"]
