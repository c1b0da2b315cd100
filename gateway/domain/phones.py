"""Phone numbers to E.164 (SPEC §4): bad or blank numbers are not errors, they make `invalid_record`."""

from __future__ import annotations

import phonenumbers

# keep every compiled metadata pattern instead of asking the re module's cache for it on each use
# (phonenumbers' own switch; its patterns are fixed, so the dict is bounded): ~10 % of a normalise
phonenumbers.enable_pattern_cache()


def normalise(raw: str, default_region: str) -> str | None:
    text = raw.strip()
    if not text:
        return None
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def international(raw: str) -> str | None:
    """A number given in international form (`+` and the country code; spaces, dots, dashes and brackets
    allowed) as E.164, or None when it is not a valid number written so (a caller ID is never guessed
    from a region)."""
    text = raw.strip()
    if not text.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask(phone: str | None) -> str:
    """For logs: keep the country prefix and the last three digits."""
    if not phone:
        return ""
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:4] + "*" * (len(phone) - 7) + phone[-3:]


def normalise_all(raws: list[str], default_region: str) -> dict[str, str | None]:
    """`normalise` of each number, by the number as given: a bulk command's numbers, normalised on a
    thread of their own while the store commits what came before (gateway/bus/intake.py)."""
    return {raw: normalise(raw, default_region) for raw in raws}
