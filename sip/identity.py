"""Who we call and who the callee sees: the Request-URI, To, From, P-Asserted-Identity and Privacy. Pure.

- The Request-URI user is the dialled number written as the trunk wants it (`sip/numbers.py`:
  `dial_format`, `dial_prefix`); `user_phone` adds `;user=phone` (RFC 3261 §19.1.1) to it, and so to
  To, which carries the same URI.
- The caller ID is the call's `Caller.number` (E.164), else `sip.from_user` as it is. A number is written
  in the same `dial_format` as the dialled one, without the prefix (a prefix selects a route, it is not
  part of anyone's number), and gets `;user=phone` like the Request-URI.
- A withheld caller ID (RFC 3323 §4.1.1.3) puts `"Anonymous" <sip:anonymous@anonymous.invalid>` in From
  and asks `Privacy: id` (RFC 3325 §9.3) of the trusted network, which must then strip the
  P-Asserted-Identity before the call leaves it — the identity is still asserted, so the carrier can
  bill and trace the call and emergency services can see it.
- With `assert_identity`, every INVITE carries `P-Asserted-Identity` (RFC 3325 §9.1) with the caller ID
  (never the anonymous one).
"""

from __future__ import annotations

from dataclasses import dataclass

from .numbers import dial_string, is_number, uri_user

ANONYMOUS = '"Anonymous" <sip:anonymous@anonymous.invalid>'


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller ID of one call: a number (E.164; None = `sip.from_user`), a display name, withheld or not."""

    number: str | None = None
    name: str | None = None
    withheld: bool = False


def quoted(name: str) -> str:
    """A display name as an RFC 3261 quoted-string (`"` and `\\` escaped)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def request_user(number: str, fmt: str = "e164", prefix: str = "") -> str:
    """The Request-URI's user part: the dialled number as the trunk wants it, escaped for a URI."""
    return uri_user(dial_string(number, fmt, prefix))


def request_uri(number: str, host: str, fmt: str = "e164", prefix: str = "", user_phone: bool = False) -> str:
    """The Request-URI over UDP/TCP (over TLS the call builds it with its transport's scheme)."""
    return f"sip:{request_user(number, fmt, prefix)}@{host}" + (";user=phone" if user_phone else "")


def asserted(
    caller: Caller | None,
    from_user: str,
    from_display: str | None,
    domain: str,
    fmt: str = "e164",
    user_phone: bool = False,
) -> str:
    """The caller's name-addr as asserted (never anonymous): From when not withheld, and the PAI."""
    number = caller.number if caller is not None else None
    user = uri_user(dial_string(number, fmt)) if number else from_user
    name = (caller.name if caller is not None else None) or from_display
    phone = ";user=phone" if user_phone and is_number(user) and number else ""
    display = f"{quoted(name)} " if name else ""
    return f"{display}<sip:{user}@{domain}{phone}>"


def from_addr(
    caller: Caller | None,
    from_user: str,
    from_display: str | None,
    domain: str,
    fmt: str = "e164",
    user_phone: bool = False,
) -> str:
    """The From name-addr (without its tag)."""
    if caller is not None and caller.withheld:
        return ANONYMOUS
    return asserted(caller, from_user, from_display, domain, fmt, user_phone)


__all__ = ["ANONYMOUS", "Caller", "asserted", "from_addr", "quoted", "request_uri", "request_user"]
