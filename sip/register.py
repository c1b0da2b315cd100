"""Registration with the PBX (RFC 3261 §10), sans-IO: REGISTER, one digest retry, refresh before expiry.

`Registration` owns the non-INVITE transactions it starts; the shell feeds it responses by Call-ID and
wakes it with `handle_timer(now)`. Refresh at 80 % of the granted expiry; after a failure, try again in
`retry_s`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import auth
from .config import UacConfig
from .message import Request, Response, digits, params
from .requests import authorization, build, challenge, tagged
from .transaction import NonInviteClientTransaction, ResponseReceived, TimedOut, Transmit


@dataclass
class Registration:
    cfg: UacConfig
    expires_s: int
    token: Callable[[], str]
    retry_s: float = 30.0
    call_id: str = ""
    cseq: int = 0
    registered: bool = False
    granted_s: int | None = None
    last_status: int | None = None
    _tx: NonInviteClientTransaction | None = None
    _next_at: float | None = 0.0
    _authed: bool = False
    _out: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.call_id = self.call_id or f"reg-{self.token()}@{self.cfg.local_host}"
        self.tag = self.token()

    def _request(self, credentials: tuple[str, str] | None = None) -> Request:
        self.cseq += 1
        cfg = self.cfg
        user = cfg.username or cfg.from_user
        aor = f"<sip:{user}@{cfg.domain}>"
        headers = [("Contact", cfg.contact(user)), ("Expires", str(self.expires_s))]
        return build(
            "REGISTER",
            cfg.uri(None, cfg.domain),
            via=cfg.via(self.token()),
            from_=tagged(aor, self.tag),
            to=aor,
            call_id=self.call_id,
            number=self.cseq,
            headers=headers if credentials is None else [*headers, credentials],
        )

    def _send(self, req: Request, now: float) -> None:
        self._tx = NonInviteClientTransaction(req, self.cfg.reliable, now, self.cfg.t1)
        self._out += [e.message for e in self._tx.events() if isinstance(e, Transmit)]

    def drain(self) -> list[Request]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        times = [t for t in (self._next_at, self._tx.get_timer() if self._tx else None) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Request]:
        if self._next_at is not None and now >= self._next_at:
            self._next_at = None
            self._authed = False
            self._send(self._request(), now)
        if self._tx is not None:
            for e in self._tx.handle_timer(now):
                if isinstance(e, Transmit):
                    self._out.append(e.message)
                elif isinstance(e, TimedOut):
                    self._failed(None, now)
        return self.drain()

    def receive(self, resp: Response, now: float) -> list[Request]:
        if self._tx is None:
            return []
        for e in self._tx.receive(resp, now):
            if not isinstance(e, ResponseReceived) or e.response.status < 200:
                continue
            code = e.response.status
            self.last_status = code
            if 200 <= code < 300:
                granted = self._granted(e.response)
                self.registered, self.granted_s = True, granted
                self._next_at = now + max(1.0, granted * 0.8)
            elif code in (401, 407) and not self._authed and self.cfg.username and self.cfg.password:
                try:
                    found = challenge(e.response)
                except auth.AuthError:
                    self._failed(code, now)
                    continue
                self._authed = True
                uri = self.cfg.uri(None, self.cfg.domain)
                answer = authorization(found, self.cfg.username, self.cfg.password, "REGISTER", uri)
                self._send(self._request(answer), now)
            else:
                self._failed(code, now)
        return self.drain()

    def _granted(self, resp: Response) -> int:
        for contact in resp.headers.get_all("contact"):
            value = params(contact).get("expires")
            if value and digits(value) and len(value) <= 10:
                return int(value)
        header = resp.headers.get("expires")
        return int(header.strip()) if header and digits(header.strip()) else self.expires_s

    def _failed(self, code: int | None, now: float) -> None:
        self.registered = False
        self.last_status = code
        self._next_at = now + self.retry_s
