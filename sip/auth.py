"""Digest authentication for a UAC (RFC 3261 §22, RFC 2617, RFC 7616): MD5 and SHA-256, qop=auth."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

_PARAM = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)')
HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class AuthError(ValueError):
    """A challenge we cannot answer (unknown scheme or algorithm, missing realm/nonce)."""


@dataclass(frozen=True, slots=True)
class Challenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> Challenge:
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise AuthError(f"unsupported scheme {scheme!r}")
    fields = {k.lower(): v.strip('"') for k, v in _PARAM.findall(rest)}
    if "realm" not in fields or "nonce" not in fields:
        raise AuthError("challenge without realm or nonce")
    algorithm = fields.get("algorithm", "MD5").upper()
    if algorithm not in HASHES:
        raise AuthError(f"unsupported algorithm {algorithm!r}")
    qop = tuple(q.strip() for q in fields.get("qop", "").split(",") if q.strip())
    return Challenge(
        fields["realm"],
        fields["nonce"],
        algorithm,
        qop,
        fields.get("opaque"),
        fields.get("stale", "").lower() == "true",
    )


def best(challenges: list[str]) -> Challenge:
    """The strongest challenge we can answer (SHA-256 before MD5, RFC 7616 §3.7)."""
    parsed: list[Challenge] = []
    for value in challenges:
        try:
            parsed.append(parse_challenge(value))
        except AuthError:
            continue
    if not parsed:
        raise AuthError("no digest challenge we can answer")
    return sorted(parsed, key=lambda c: c.algorithm != "SHA-256")[0]


def response(
    ch: Challenge, username: str, password: str, method: str, uri: str, cnonce: str | None = None, nc: int = 1
) -> str:
    """The Authorization / Proxy-Authorization value answering `ch`."""
    h = HASHES[ch.algorithm]

    def hexdigest(text: str) -> str:
        return h(text.encode()).hexdigest()

    ha1 = hexdigest(f"{username}:{ch.realm}:{password}")
    ha2 = hexdigest(f"{method}:{uri}")
    parts = [f'username="{username}"', f'realm="{ch.realm}"', f'nonce="{ch.nonce}"', f'uri="{uri}"']
    if "auth" in ch.qop:
        cnonce = cnonce or secrets.token_hex(8)
        ncv = f"{nc:08x}"
        digest = hexdigest(f"{ha1}:{ch.nonce}:{ncv}:{cnonce}:auth:{ha2}")
        parts += [f'response="{digest}"', "qop=auth", f"nc={ncv}", f'cnonce="{cnonce}"']
    else:
        parts.append(f'response="{hexdigest(f"{ha1}:{ch.nonce}:{ha2}")}"')
    parts.append(f"algorithm={ch.algorithm}")
    if ch.opaque is not None:
        parts.append(f'opaque="{ch.opaque}"')
    return "Digest " + ", ".join(parts)
