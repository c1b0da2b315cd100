"""The trunk's settings for placing calls (`UacConfig`), and what is built from them alone: the URIs of the
PBX side, our Contact and our Via; and what telgate says about itself in every message (User-Agent, Allow).

A value that cannot be written into a message is refused when the settings are made (`HeaderValueError`
naming it), not when the first request is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from .message import HeaderValueError, checked
from .uri import require_text, require_user

USER_AGENT = "telgate"
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY, REFER, UPDATE"


@dataclass(frozen=True)
class UacConfig:
    local_host: str
    local_port: int
    pbx: str  # host:port of the outbound proxy / PBX
    transport: str = "UDP"
    from_user: str = "telgate"
    from_display: str | None = None
    username: str | None = None
    password: str | None = None
    t1: float = 0.5  # RFC 3261 T1 (RTT estimate): Timer A starts at T1, Timers B and F are 64 x T1
    dial_format: str = "e164"  # how the Request-URI user writes the number (sip/numbers.py)
    dial_prefix: str = ""
    user_phone: bool = False  # `;user=phone` on the Request-URI and To (and on a caller ID number)
    assert_identity: bool = False  # P-Asserted-Identity (RFC 3325) on every INVITE
    tls_scheme: str = "sips"  # over TLS: sips: URIs (RFC 5630), or "sip" (sip:...;transport=tls) for PBXs without sips:
    session_expires_s: int = 1800  # RFC 4028: the Session-Expires we ask for (§4 recommends 1800)

    def __post_init__(self) -> None:
        """What goes into every message is writable: `HeaderValueError` names the first value that is not."""
        require_user("sip.from_user", self.from_user)
        if self.from_display is not None:
            require_text("sip.from_display", self.from_display)
        for what, value in (("local host", self.local_host), ("sip.pbx", self.pbx), ("sip.transport", self.transport)):
            checked(what, value)
            if not value or " " in value or "\t" in value:
                raise HeaderValueError(what, f"empty or holds a space: {value[:40]!r}")

    @property
    def reliable(self) -> bool:
        return self.transport.upper() != "UDP"

    @property
    def domain(self) -> str:
        return self.pbx.split(":")[0]

    @property
    def scheme(self) -> str:
        """`sips` over TLS (RFC 3261 §26.2, RFC 5630): the Request-URI, To and Contact say TLS end to end."""
        return "sips" if self.transport.upper() == "TLS" and self.tls_scheme == "sips" else "sip"

    def uri(self, user: str | None, host: str) -> str:
        """A URI of the PBX side (Request-URI, To): sips: over TLS, or sip:...;transport=tls when asked."""
        where = f"{user}@{host}" if user else host
        plain_tls = self.transport.upper() == "TLS" and self.scheme == "sip"
        return f"{self.scheme}:{where}{';transport=tls' if plain_tls else ''}"

    def contact(self, user: str) -> str:
        """Our Contact: a sips: URI over TLS (RFC 5630 §3.1.1: no `transport=tls`), else sip: with the transport."""
        where = f"{user}@{self.local_host}:{self.local_port}"
        return f"<sips:{where}>" if self.scheme == "sips" else f"<sip:{where};transport={self.transport.lower()}>"

    def via(self, branch_token: str) -> str:
        """Our Via: this address, a new RFC 3261 branch, and rport (RFC 3581) for NAT; over TLS also `alias`
        (RFC 5923): the PBX sends its requests back on our connection (telgate has no TLS listener)."""
        alias = ";alias" if self.transport.upper() == "TLS" else ""
        return (
            f"SIP/2.0/{self.transport.upper()} {self.local_host}:{self.local_port};branch=z9hG4bK{branch_token};rport"
            f"{alias}"
        )
