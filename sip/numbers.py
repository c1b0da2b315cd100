"""Dial strings for trunks: an E.164 number → the user part a PBX or carrier expects. Pure.

`sip.dial_format` says how the number is written, `sip.dial_prefix` what goes in front of it:
- `e164` (the default, telgate's behaviour before there was a choice): the digits without `+`,
  `+420601234567` → `420601234567`;
- `+e164`: with the `+`, `+420601234567`;
- `national`: the digits of the number as its own country dials it nationally (phonenumbers' national
  format), national prefix included where the country has one: `+442079460958` → `02079460958` (UK),
  `+4930123456` → `030123456` (DE), `+420601234567` → `601234567` (CZ has none), `+12015550123` →
  `2015550123` (the NANP writes no 1 nationally).

The prefix (digits, `*`, `#`; an outside line `9`, a carrier's tech prefix) is put in front of the
number as given. In a SIP URI a `#` must be escaped (RFC 3261 §25.1: it is neither unreserved nor
user-unreserved): `uri_user` writes it `%23`.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum

import phonenumbers


class DialFormat(StrEnum):
    PLUS_E164 = "+e164"
    E164 = "e164"
    NATIONAL = "national"


PREFIX_PATTERN = r"^[0-9*#]{0,32}$"
_E164 = re.compile(r"^\+?[0-9]{2,15}$")


@functools.lru_cache(maxsize=8192)
def dial_string(number: str, fmt: DialFormat | str = DialFormat.E164, prefix: str = "") -> str:
    """The dial string for `number` (E.164, with or without `+`). Something that is not an E.164 number
    (a `sip.from_user` such as `telgate`) is returned as it is, without the prefix: it is not dialled."""
    if not _E164.match(number):
        return number
    digits = number.lstrip("+")
    fmt = DialFormat(fmt)
    if fmt is DialFormat.PLUS_E164:
        body = "+" + digits
    elif fmt is DialFormat.E164:
        body = digits
    else:
        body = _national(digits)
    return prefix + body


def _national(digits: str) -> str:
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return digits
    if not phonenumbers.is_possible_number(parsed):
        return digits
    text = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    national = re.sub(r"[^0-9]", "", text)
    return national or digits


def uri_user(dial: str) -> str:
    """A dial string as the user part of a SIP URI: `#` escaped as `%23` (`*` and `+` may stay)."""
    return dial.replace("#", "%23")


def is_number(user: str) -> bool:
    """An E.164 number, with or without `+` (what `;user=phone` may flag)."""
    return bool(_E164.match(user))


__all__ = ["PREFIX_PATTERN", "DialFormat", "dial_string", "is_number", "uri_user"]
