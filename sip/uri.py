"""What a caller may give the SIP layer to write into a message, checked against each value's grammar. Pure.

Each `check_*` returns None for a value that may be used, else a short message saying what is wrong (for a
refusal the owner shows its client); each `require_*` raises `HeaderValueError` with that message. The
builders in `sip.message` refuse a control character in any header field whatever its source; these are
the stricter checks of values that come from outside (a backend's command, the configuration).

- `check_target`: a transfer target (the REFER's Refer-To, `connect_to`), an absolute `sip:`/`sips:` URI
  (RFC 3261 §25.1) or a `tel:` URI (RFC 3966 §3): ASCII only, no control character raw or %-escaped
  (`%00`-`%1F`, `%7F`), no space, no `<`, `>` or `"`, at most `MAX_TARGET` characters. URI headers (`?...`,
  RFC 3261 §19.1.5) are refused: they ask the referred party to put header fields of the caller's choice
  into the request it sends (RFC 3515 §2.1), which is the injection this check exists to prevent.
- `check_text`: a display name or other free text written as a quoted-string: no control character
  (Unicode Cc, C1 and DEL included), no surrogate, no line or paragraph separator, at most `MAX_TEXT`.
- `check_user`: the user part of a URI we build (a dialled number, `from_user`): RFC 3261 `user`
  characters (%-escapes included, escaped controls not), at most `MAX_USER`.
"""

from __future__ import annotations

import re
import unicodedata

from .message import HeaderValueError

MAX_TARGET = 512
MAX_TEXT = 128
MAX_USER = 128

_ALNUM = "A-Za-z0-9"
_MARK = r"\-_.!~*'()"
_UNRESERVED = f"{_ALNUM}{_MARK}"
_ESCAPED = "%[0-9A-Fa-f]{2}"
_USER = f"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+"
_PASSWORD = f"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*"
_LABEL = f"[{_ALNUM}](?:[{_ALNUM}\\-]*[{_ALNUM}])?"
_HOSTNAME = rf"(?:{_LABEL}\.)*{_LABEL}\.?"
_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"
_IPV6 = r"\[[0-9A-Fa-f:.]{2,45}\]"
_HOST = f"(?:{_IPV6}|{_IPV4}|{_HOSTNAME})"
_PARAMCHAR = f"(?:[{_UNRESERVED}\\[\\]/:&+$]|{_ESCAPED})"
_URI_PARAMS = f"(?:;{_PARAMCHAR}+(?:={_PARAMCHAR}+)?)*"
SIP_URI = re.compile(f"^sips?:(?:{_USER}(?::{_PASSWORD})?@)?{_HOST}(?::\\d{{1,5}})?{_URI_PARAMS}\\Z", re.IGNORECASE)

_VISUAL = r"\-.()"
_GLOBAL = f"\\+[0-9{_VISUAL}]*[0-9][0-9{_VISUAL}]*"
_LOCAL = f"[0-9A-Fa-f*#{_VISUAL}]*[0-9A-Fa-f*#][0-9A-Fa-f*#{_VISUAL}]*"
_TEL_PARAMCHAR = f"(?:[{_UNRESERVED}\\[\\]/:&+$]|{_ESCAPED})"
_TEL_PARAMS = f"(?:;[{_ALNUM}\\-]+(?:={_TEL_PARAMCHAR}+)?)*"
TEL_URI = re.compile(f"^tel:(?:(?P<global>{_GLOBAL})|(?P<local>{_LOCAL})){_TEL_PARAMS}\\Z", re.IGNORECASE)

USER = re.compile(f"^{_USER}\\Z")
_ESCAPED_CONTROL = re.compile("%(?:[01][0-9A-Fa-f]|7[Ff])")
_SEPARATORS = frozenset({"\u2028", "\u2029"})


def check_target(value: str) -> str | None:
    """None when `value` is a SIP or tel URI (RFC 3261 §25 / RFC 3966) with no control characters that a
    transfer may send the call to; else what is wrong with it, in a few words."""
    if not isinstance(value, str) or not value:
        return "empty"
    if len(value) > MAX_TARGET:
        return f"longer than {MAX_TARGET} characters"
    if not value.isascii():
        return "not ASCII (a URI writes other characters %-escaped)"
    if (bad := _control(value)) is not None:
        return bad
    if (esc := _ESCAPED_CONTROL.search(value)) is not None:
        return f"an escaped control character {esc.group()!r} at offset {esc.start()}"
    scheme = value.partition(":")[0].lower()
    if scheme in ("sip", "sips"):
        if "?" in value.partition("@")[2] or ("@" not in value and "?" in value):
            return "URI headers (?...) are not allowed"
        return None if SIP_URI.match(value) else f"not a {scheme}: URI (RFC 3261 §25.1)"
    if scheme == "tel":
        found = TEL_URI.match(value)
        if found is None:
            return "not a tel: URI (RFC 3966 §3)"
        if found.group("local") is not None and ";phone-context=" not in value.lower():
            return "a local tel: number needs a phone-context (RFC 3966 §5.1.5)"
        return None
    return "not a sip:, sips: or tel: URI"


def check_text(value: str, limit: int = MAX_TEXT) -> str | None:
    """None when `value` may be written as a display name (a quoted-string); else what is wrong with it."""
    if not isinstance(value, str):
        return "not text"
    if len(value) > limit:
        return f"longer than {limit} characters"
    for offset, ch in enumerate(value):
        category = unicodedata.category(ch)
        if category in ("Cc", "Cs") or ch in _SEPARATORS:
            return f"control character U+{ord(ch):04X} at offset {offset}"
    return None


def check_user(value: str) -> str | None:
    """None when `value` may be written as the user part of a SIP URI; else what is wrong with it."""
    if not isinstance(value, str) or not value:
        return "empty"
    if len(value) > MAX_USER:
        return f"longer than {MAX_USER} characters"
    if (bad := _control(value)) is not None:
        return bad
    if (esc := _ESCAPED_CONTROL.search(value)) is not None:
        return f"an escaped control character {esc.group()!r} at offset {esc.start()}"
    return None if USER.match(value) else "not a SIP URI user part (RFC 3261 §25.1)"


def _control(value: str) -> str | None:
    for offset, ch in enumerate(value):
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            return f"control character U+{ord(ch):04X} at offset {offset}"
    return None


def require_target(value: str) -> str:
    """`value` when `check_target` finds nothing wrong with it, else `HeaderValueError`."""
    return _require("transfer target", value, check_target(value))


def require_text(what: str, value: str) -> str:
    return _require(what, value, check_text(value))


def require_user(what: str, value: str) -> str:
    return _require(what, value, check_user(value))


def _require(what: str, value: str, why: str | None) -> str:
    if why is not None:
        raise HeaderValueError(what, why)
    return value


__all__ = [
    "MAX_TARGET",
    "MAX_TEXT",
    "MAX_USER",
    "check_target",
    "check_text",
    "check_user",
    "require_target",
    "require_text",
    "require_user",
]
