"""A local WhatsApp Cloud API stand-in for tests, benchmarks and the demo — real HTTP both ways.

It follows Meta's documented contract: `POST /{version}/{phone_number_id}/messages` with a bearer
token, Meta-shaped success (`messages[0].id`, `message_status`) and error bodies (`error.code`,
`error.error_data.details`, `fbtrace_id`); then status webhooks to the configured URL, signed with
`X-Hub-Signature-256` over the raw body, batched, delayed, duplicated as a scenario says, and retried
with backoff when the receiver does not answer 200 — as Meta does. A message's next status is POSTed
only once the POST carrying its previous one was answered (200, or given up): two statuses of one
message are never on the wire at once, so the receiver takes them in the order they were sent.

What happens to a message is chosen by a `Scenario` per recipient number.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("telgate.standin")
Step = tuple[float, str, int | None]  # (seconds after the send, status, error code for `failed`)

ERROR_TITLES = {
    130429: "Rate limit hit",
    131026: "Message undeliverable",
    131049: "Meta chose not to deliver",
    131047: "Re-engagement message",
    100: "Invalid parameter",
    131008: "Required parameter is missing",
    190: "Access token has expired",
    131031: "Business account locked",
    131000: "Something went wrong",
}


@dataclass(frozen=True)
class Scenario:
    statuses: tuple[Step, ...] = ((0.02, "sent", None), (0.04, "delivered", None), (0.06, "read", None))
    send_error: tuple[int, int] | None = None  # (HTTP status, error code) instead of accepting
    send_delay_s: float = 0.0  # hold the response this long (to make the client time out)
    duplicate: bool = False  # deliver every webhook twice
    message_status: str | None = "accepted"
    errors_after_s: float | None = None  # an account-level value.errors notification after the send
    error_code: int = 0
    wamid: str | None = None  # answer with this message id (to replay recorded webhooks against it)


@dataclass
class Sent:
    wamid: str
    to: str
    template: str
    callback_data: str | None
    at: float


@dataclass
class StandIn:
    access_token: str
    app_secret: str
    webhook_url: str
    phone_number_id: str = "100000000000001"
    api_version: str = "v21.0"
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    default: Scenario = Scenario()
    batch_window_s: float = 0.01  # statuses due within this window go in one POST
    max_batch: int = 1000
    retry_delays_s: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 4.0)
    host: str = "127.0.0.1"
    port: int = 0
    sent: list[Sent] = field(default_factory=list)
    # the wire ledger: every send request that reached the endpoint, answered with a message id or an
    # error alike (a test compares it with the contacts' attempts: SPEC §9)
    received: list[Sent] = field(default_factory=list)
    deliveries: int = 0  # webhook POSTs made (retries included)
    refused_deliveries: int = 0  # answered with something other than 200
    outstanding: int = 0  # webhook notifications scheduled and not yet delivered (or given up)
    display_phone_number: str = "15550000000"
    waba_id: str = "WABA_STANDIN"
    inbound_posted: list[Any] = field(default_factory=list)  # customer messages POSTed by post_messages
    notices_posted: list[tuple[str, Any]] = field(default_factory=list)  # (field, value) POSTed by post_notice

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._due: asyncio.Queue[tuple[float, dict[str, Any]] | None] = asyncio.Queue()  # None: a wamid freed
        self._on_wire: set[str] = set()  # wamids with a status POST not yet answered
        self._runner: web.AppRunner | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._children: set[asyncio.Task[None]] = set()  # the group's tasks, cancelled at the exit
        self._stack = contextlib.AsyncExitStack()

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ---------------------------------------------------------------------------------
    async def __aenter__(self) -> StandIn:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_post("/{version}/{pnid}/messages", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = await self._stack.enter_async_context(aiohttp.ClientSession())
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        self._spawn(self._deliver_loop())
        return self

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """`work` as a task of the stand-in's TaskGroup, tracked so that the exit can cancel it."""
        assert self._tasks is not None
        task = self._tasks.create_task(work)
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        for task in list(self._children):
            task.cancel()
        try:
            await self._stack.aclose()
        except Exception as exc:  # a delivery that failed in the group (or the session's close): said, not raised
            log.error("the Cloud API stand-in ended with an error", exc_info=exc)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- the send endpoint -------------------------------------------------------------------------
    def _error(self, http: int, code: int, details: str | None = None) -> web.Response:
        body = {
            "error": {
                "message": f"({code}) {ERROR_TITLES.get(code, 'Error')}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": details or ERROR_TITLES.get(code, "Error")},
                "fbtrace_id": f"A{next(self._ids):015d}",
            }
        }
        return web.json_response(body, status=http)

    async def _send(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.access_token}":
            return self._error(401, 190, "Invalid OAuth access token")
        if request.match_info["pnid"] != self.phone_number_id:
            return self._error(400, 100, "Unsupported post request: unknown phone number id")
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, 100, "Invalid JSON")
        to = str(body.get("to", ""))
        tpl = body.get("template") or {}
        callback = body.get("biz_opaque_callback_data")
        self.received.append(Sent("", to, str(tpl.get("name", "")), callback, time.monotonic()))
        if (
            body.get("messaging_product") != "whatsapp"
            or body.get("type") != "template"
            or not to
            or not tpl.get("name")
            or not isinstance(tpl.get("language"), dict)
        ):
            return self._error(400, 131008, "Required parameter is missing")
        scenario = self.scenarios.get(to, self.default)
        if scenario.send_delay_s:
            await asyncio.sleep(scenario.send_delay_s)
        if scenario.send_error is not None:
            http, code = scenario.send_error
            return self._error(http, code)
        wamid = scenario.wamid or f"wamid.STANDIN{next(self._ids):012d}"
        now = time.monotonic()
        self.sent.append(Sent(wamid, to, tpl["name"], callback, now))
        for delay, status, status_code in scenario.statuses:
            self._schedule((now + delay, self._status(wamid, to, status, status_code, callback)))
            if scenario.duplicate:
                self._schedule((now + delay + 0.001, self._status(wamid, to, status, status_code, callback)))
        if scenario.errors_after_s is not None:
            self._schedule(
                (
                    now + scenario.errors_after_s,
                    {
                        "errors": [
                            {"code": scenario.error_code, "title": ERROR_TITLES.get(scenario.error_code, "Error")}
                        ]
                    },
                )
            )
        message: dict[str, Any] = {"id": wamid}
        if scenario.message_status:
            message["message_status"] = scenario.message_status
        return web.json_response(
            {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}], "messages": [message]}
        )

    @staticmethod
    def _status(wamid: str, to: str, status: str, code: int | None, callback: str | None) -> dict[str, Any]:
        st: dict[str, Any] = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": to}
        if callback is not None:
            st["biz_opaque_callback_data"] = callback
        if status in ("sent", "delivered"):
            st["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "marketing"}
        if status == "failed" and code is not None:
            st["errors"] = [
                {
                    "code": code,
                    "title": ERROR_TITLES.get(code, "Error"),
                    "error_data": {"details": ERROR_TITLES.get(code, "Error")},
                }
            ]
        return {"statuses": [st]}

    # -- webhooks out ------------------------------------------------------------------------------
    def envelope(self, values: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": "WABA_STANDIN",
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": "15550000000",
                                    "phone_number_id": self.phone_number_id,
                                },
                                **v,
                            },
                        }
                        for v in values
                    ],
                }
            ],
        }

    def sign(self, body: bytes) -> str:
        return "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()

    async def post_webhook(self, payload: dict[str, Any] | bytes, signature: str | None = None) -> int:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature if signature is not None else self.sign(body),
        }
        self.deliveries += 1
        try:
            async with self._session.post(self.webhook_url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    self.refused_deliveries += 1
                return resp.status
        except aiohttp.ClientError:
            self.refused_deliveries += 1
            return 0

    # -- what customers and Meta send besides statuses (inbound messages, notices) ----------------------
    def inbound_message(
        self,
        from_: str,
        type: str,
        content: Any = None,
        *,
        context_id: str | None = None,
        wamid: str | None = None,
        timestamp: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """One customer message as Meta shapes it: `{"from", "id", "timestamp", "type", type: content}`, with
        `context` {from: the business number, id: `context_id`} when it answers a message."""
        msg: dict[str, Any] = {
            "from": from_,
            "id": wamid or f"wamid.INBOUND{next(self._ids):012d}",
            "timestamp": str(int(time.time()) if timestamp is None else timestamp),
            "type": type,
        }
        if context_id is not None:
            msg["context"] = {"from": self.display_phone_number, "id": context_id}
        if content is not None:
            msg[type] = content
        return {**msg, **extra}

    def text_message(self, from_: str, body: str, **kw: Any) -> dict[str, Any]:
        return self.inbound_message(from_, "text", {"body": body}, **kw)

    def button_message(self, from_: str, payload: str, text: str, **kw: Any) -> dict[str, Any]:
        """A tap on a template's quick-reply button (type `button`)."""
        return self.inbound_message(from_, "button", {"payload": payload, "text": text}, **kw)

    def interactive_reply(
        self, from_: str, reply_id: str, title: str, kind: str = "button_reply", **kw: Any
    ) -> dict[str, Any]:
        """An answer to an interactive message: `button_reply` or `list_reply`."""
        return self.inbound_message(from_, "interactive", {"type": kind, kind: {"id": reply_id, "title": title}}, **kw)

    def message_envelope(
        self,
        messages: list[Any],
        contacts: list[Any] | None = None,
        names: dict[str, str] | None = None,
        statuses: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A POST body of customer messages as Meta sends it: field "messages", `metadata`, and `contacts`
        (given, or one per sender with the profile name from `names`); `statuses` go in the same value."""
        if contacts is None:
            senders = dict.fromkeys(
                m["from"] for m in messages if isinstance(m, dict) and isinstance(m.get("from"), str)
            )
            contacts = [{"profile": {"name": (names or {}).get(s, "Customer")}, "wa_id": s} for s in senders]
        value: dict[str, Any] = {"contacts": contacts, "messages": messages}
        if statuses:
            value["statuses"] = statuses
        return self.envelope([value])

    def notice_envelope(self, field: str, value: Any, *more: tuple[str, Any]) -> dict[str, Any]:
        """A POST body of one notice (and any `more` (field, value) pairs) as Meta sends it: one change per
        notice, the account's id and the entry's `time`."""
        changes = [{"field": f, "value": v} for f, v in ((field, value), *more)]
        return {
            "object": "whatsapp_business_account",
            "entry": [{"id": self.waba_id, "time": int(time.time()), "changes": changes}],
        }

    def user_preferences_value(
        self, wa_id: str, value: str = "stop", category: str = "marketing_messages", name: str = "Customer"
    ) -> dict[str, Any]:
        """The value of a `user_preferences` notice: a customer stopped (or resumed) marketing messages."""
        detail = "User requested to stop marketing messages" if value == "stop" else f"User chose to {value}"
        return {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": self.display_phone_number, "phone_number_id": self.phone_number_id},
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "user_preferences": [
                {"wa_id": wa_id, "detail": detail, "category": category, "value": value, "timestamp": int(time.time())}
            ],
        }

    @staticmethod
    def template_status_value(
        name: str,
        event: str = "PAUSED",
        language: str = "en",
        reason: str | None = None,
        template_id: int = 1000000000000001,
        category: str = "MARKETING",
        **extra: Any,
    ) -> dict[str, Any]:
        """The value of a `message_template_status_update` notice (`extra`: other_info, disable_info, ...)."""
        return {
            "event": event,
            "message_template_id": template_id,
            "message_template_name": name,
            "message_template_language": language,
            "reason": reason if reason is not None else "NONE",
            "message_template_category": category,
            **extra,
        }

    async def post_messages(
        self,
        messages: list[Any],
        contacts: list[Any] | None = None,
        names: dict[str, str] | None = None,
        statuses: list[dict[str, Any]] | None = None,
        retry: bool = True,
    ) -> int:
        """POST customer messages, signed, to the webhook URL; as Meta, again with backoff until it answers
        200 (`retry`). Returns the last HTTP status (0: no answer). Recorded in `inbound_posted`."""
        self.inbound_posted.extend(messages)
        return await self.post_until_ok(self.message_envelope(messages, contacts, names, statuses), retry)

    async def post_notice(self, field: str, value: Any, *more: tuple[str, Any], retry: bool = True) -> int:
        """POST Meta's notice (`user_preferences`, `message_template_status_update`, `account_update`, ...),
        signed, as `post_messages` does. Recorded in `notices_posted`."""
        self.notices_posted.extend(((field, value), *more))
        return await self.post_until_ok(self.notice_envelope(field, value, *more), retry)

    async def post_until_ok(self, payload: dict[str, Any] | bytes, retry: bool = True) -> int:
        status = 0
        for delay in (0.0, *self.retry_delays_s) if retry else (0.0,):
            if delay:
                await asyncio.sleep(delay)
            status = await self.post_webhook(payload)
            if status == 200:
                break
        return status

    def _schedule(self, item: tuple[float, dict[str, Any]]) -> None:
        self.outstanding += 1
        self._due.put_nowait(item)

    async def _deliver_with_retries(
        self, values: list[dict[str, Any]], items: int = 0, wamids: frozenset[str] = frozenset()
    ) -> None:
        payload = self.envelope(values)
        try:
            for delay in (0.0, *self.retry_delays_s):
                if delay:
                    await asyncio.sleep(delay)
                if await self.post_webhook(payload) == 200:
                    return
        finally:
            self.outstanding -= items
            if wamids:  # their next statuses may go now
                self._on_wire -= wamids
                self._due.put_nowait(None)

    async def _deliver_loop(self) -> None:
        pending: list[tuple[float, dict[str, Any]]] = []
        assert self._tasks is not None

        def wamids(item: tuple[float, dict[str, Any]]) -> set[str]:
            return {s["id"] for s in item[1].get("statuses", ())}

        while True:
            # a status whose message has one on the wire waits for that POST's answer, however due it is
            free = [p for p in pending if not wamids(p) & self._on_wire]
            timeout = None
            if free:
                timeout = max(0.0, min(t for t, _ in free) - time.monotonic())
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can lose a cancellation in 3.11
                    item = await self._due.get()
                items = [item]
                while not self._due.empty():
                    items.append(self._due.get_nowait())
                pending.extend(i for i in items if i is not None)
            except TimeoutError:
                pass
            now = time.monotonic()
            ready: list[tuple[float, dict[str, Any]]] = []
            going: set[str] = set()
            for p in sorted(pending, key=lambda p: p[0]):  # stable: a message's statuses in the order scheduled
                if p[0] > now + self.batch_window_s:
                    break
                ids = wamids(p)
                if ids & (self._on_wire | going):  # one status of a message per POST, the next after its answer
                    going |= ids
                    continue
                going |= ids
                ready.append(p)
            if not ready:
                continue
            taken = {id(p) for p in ready}
            pending = [p for p in pending if id(p) not in taken]
            statuses = [v for _, v in ready if "statuses" in v]
            others = [v for _, v in ready if "statuses" not in v]
            merged = [s for v in statuses for s in v["statuses"]]
            for i in range(0, len(merged), self.max_batch):
                chunk = merged[i : i + self.max_batch]
                chunk_ids = frozenset(s["id"] for s in chunk)
                self._on_wire |= chunk_ids
                self._spawn(self._deliver_with_retries([{"statuses": chunk}], len(chunk), chunk_ids))
            for v in others:
                self._spawn(self._deliver_with_retries([v], 1))
