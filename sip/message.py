"""SIP message codec (RFC 3261 §7, §20, §25): bytes ↔ frozen Request/Response values. Sans-IO.

Tolerant of what real PBXs send: compact header names, folded lines, LF-only line ends, spaces around
the colon, several values in one header line, extra octets after Content-Length in a datagram.
Strict about what is really malformed — each raises `ParseError` with the status a UAS answers
(400, or 505 for an unknown SIP version): bad start lines, a Request-URI with spaces or in <>,
CSeq/Max-Forwards/Content-Length out of range or repeated, a CSeq method that is not the request's,
unbalanced quotes in name-addr headers, empty Via values, missing mandatory headers, a control character
(anything below 0x20 but HTAB, DEL, a bare CR or LF) in the start line or a header field.

`parse` is total: every byte string gives a `Request`, a `Response` or a `ParseError`, nothing else.

Building is as strict: `Headers.with_` and `encode` refuse (`HeaderValueError`) a name that is not a token
or a value holding a control character — a CR or LF there would end the header and start another (header
injection). Non-UTF-8 octets read from the wire come back as surrogate escapes and are written out as
they came; any other surrogate is refused (it cannot be written as UTF-8). `sip.uri` checks what a caller
gives before it gets this far, with the grammar of each value.

The errors (`SipError`): `ParseError` is the remote side's fault (what came in), `HeaderValueError` ours
(what we were asked to send).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_MESSAGE = 64 * 1024
SIP_VERSION = "SIP/2.0"

COMPACT = {
    "i": "call-id",
    "m": "contact",
    "f": "from",
    "t": "to",
    "v": "via",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
    "e": "content-encoding",
    "s": "subject",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "u": "allow-events",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}
CANONICAL = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
    "min-se": "Min-SE",
}
# headers whose comma-separated values are separate entries (RFC 3261 §7.3.1)
MULTI = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "allow",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "allow-events",
        "in-reply-to",
    }
)
SINGLE = frozenset({"from", "to", "call-id", "cseq", "max-forwards", "content-length", "expires"})
MANDATORY = ("via", "from", "to", "call-id", "cseq")
NAME_ADDR = frozenset({"from", "to", "contact", "route", "record-route", "refer-to", "referred-by", "reply-to"})

TOKEN = re.compile(r"^[A-Za-z0-9\-.!%*_+`'~]+$")
_VIA = re.compile(
    r"^SIP\s*/\s*2\.0\s*/\s*[A-Za-z0-9\-.!%*_+`'~]+\s+[^\s;]+(?:\s*;\s*[^;\s=]+(?:\s*=\s*[^;]*)?)*\s*$", re.IGNORECASE
)
MAX_SEQ = 2**31 - 1


class SipError(Exception):
    """The root of sip's own errors."""


class ParseError(SipError, ValueError):
    """A malformed message (a remote fault); `status` is what a UAS answers to such a request (responses are
    dropped)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class HeaderValueError(SipError, ValueError):
    """A value we were asked to put into a message that its grammar does not allow (a local fault): a control
    character (CR, LF, NUL, ...), a surrogate, or a malformed URI. Nothing was sent."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")
        self.what = what
        self.why = why


# what may never be written into a start line or a header field: CR and LF anywhere; other C0 controls and
# DEL unless escaped by a backslash (RFC 3261 §25.1 quoted-pair, which RFC 4475's intmeth uses); surrogates
# other than the escapes of non-UTF-8 octets read from the wire (U+DC80-U+DCFF)
_UNSAFE = re.compile(r"[\r\n]|(?<!\\)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[\ud800-\udc7f\udd00-\udfff]")
# what a received start line or header field may not hold: the same controls
_CONTROL_IN_HEAD = re.compile(r"\r|(?<!\\)[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # the lines joined by LF


def unsafe(value: str) -> str | None:
    """The first character of `value` that may not be written into a header field, described; else None."""
    found = _UNSAFE.search(value)
    return None if found is None else f"control character U+{ord(found.group()):04X} at offset {found.start()}"


def checked(what: str, value: str) -> str:
    """`value` when it may be written into a header field (or a start line), else `HeaderValueError`."""
    if value.isascii() and value.isprintable():  # the common case, at C speed: no control, no DEL, no HTAB
        return value
    if (why := unsafe(value)) is not None:
        raise HeaderValueError(what, why)
    return value


_NAMES: dict[str, str] = {}  # header names already found to be tokens -> their canonical form


def canonical(name: str) -> str:
    low = name.lower()
    low = COMPACT.get(low, low)
    return CANONICAL.get(low, "-".join(p.capitalize() for p in low.split("-")))


@dataclass(frozen=True, slots=True)
class Headers:
    """Ordered header fields; names are compared case-insensitively, compact forms expanded."""

    items: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        key = COMPACT.get(name.lower(), name.lower())
        for n, v in self.items:
            if n.lower() == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        key = COMPACT.get(name.lower(), name.lower())
        out: list[str] = []
        for n, v in self.items:
            if n.lower() == key:
                out.extend(split_values(v) if key in MULTI else [v])
        return out

    def with_(self, name: str, value: str) -> Headers:
        """These headers and `name: value` after them; `HeaderValueError` for a name that is not a token or a
        value with a control character in it (RFC 3261 §25.1: no CR, LF or other CTL in a header field)."""
        known = _NAMES.get(name)
        if known is None:
            if not TOKEN.fullmatch(name):
                raise HeaderValueError("header name", f"not a token: {name[:40]!r}")
            known = canonical(name)
            if len(_NAMES) < 512:
                _NAMES[name] = known
        return Headers((*self.items, (known, checked(name, value))))

    def without(self, name: str) -> Headers:
        key = COMPACT.get(name.lower(), name.lower())
        return Headers(tuple((n, v) for n, v in self.items if n.lower() != key))

    def replace(self, name: str, value: str) -> Headers:
        return self.without(name).with_(name, value)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def encode(self) -> bytes:
        return _encode(f"{self.method} {self.uri} {SIP_VERSION}", self.headers, self.body)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def encode(self) -> bytes:
        return _encode(f"{SIP_VERSION} {self.status} {self.reason}", self.headers, self.body)


Message = Request | Response


def _encode(start: str, headers: Headers, body: bytes) -> bytes:
    lines = [checked("start line", start)]
    lines += [f"{n}: {v}" for n, v in headers.items if n.lower() != "content-length"]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def split_values(value: str) -> list[str]:
    """Split a header value on top-level commas (not inside quotes or <...>)."""
    out, buf, quoted, angle, escaped = [], [], False, 0, False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
            continue
        if ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "<" and not quoted:
            angle += 1
        elif ch == ">" and not quoted and angle:
            angle -= 1
        elif ch == "," and not quoted and not angle:
            out.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    out.append("".join(buf).strip())
    return out


def _balanced_quotes(value: str) -> bool:
    quoted, escaped = False, False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
    return not quoted


def digits(text: str) -> bool:
    """ASCII digits only (`str.isdigit` also takes `²` and other digits `int` refuses)."""
    return text.isascii() and text.isdigit()


def _int(value: str, what: str, limit: int) -> int:
    text = value.strip()
    if not digits(text) or len(text) > 10 or int(text) > limit:
        raise ParseError(f"{what} is not an integer in range: {text[:40]!r}")
    return int(text)


def parse(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE:
        raise ParseError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}", 513)
    data = data.lstrip(b"\r\n")  # RFC 3261 §7.5: CRLFs before the start line are ignored
    end = data.find(b"\r\n\r\n")
    sep = 4
    lf_end = data.find(b"\n\n")
    if end < 0 or (0 <= lf_end < end):
        end, sep = lf_end, 2
    if end < 0:
        raise ParseError("no empty line after the header fields")
    head = data[:end].decode("utf-8", "surrogateescape")
    if sep == 2 and head.endswith("\r"):  # "...\r\n\n": the last line's CR before the bare-LF empty line
        head = head[:-1]
    rest = data[end + sep :]
    text = head.replace("\r\n", "\n")
    if (bad := _CONTROL_IN_HEAD.search(text)) is not None:  # a bare CR, a NUL, ... (RFC 3261 §25.1)
        at = text.count("\n", 0, bad.start()) + 1
        raise ParseError(f"control character U+{ord(bad.group()):04X} in line {at}")
    raw_lines = text.split("\n")
    lines: list[str] = []
    for line in raw_lines:
        if line[:1] in (" ", "\t") and lines:  # folded continuation (LWS)
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    start, header_lines = lines[0], lines[1:]
    items: list[tuple[str, str]] = []
    for line in header_lines:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not TOKEN.match(name):
            raise ParseError(f"malformed header line: {line[:60]!r}")
        items.append((canonical(name), value.strip()))
    headers = Headers(tuple(items))
    message = _start_line(start, headers)
    _check_headers(message, headers)
    body = _body(headers, rest, lf_only=sep == 2)
    if isinstance(message, Request):
        return Request(message.method, message.uri, headers, body)
    return Response(message.status, message.reason, headers, body)


def _start_line(start: str, headers: Headers) -> Message:
    if start.upper().startswith("SIP/"):
        version, sp1, rest = start.partition(" ")
        code, sp2, reason = rest.partition(" ")
        if version.upper() != SIP_VERSION:
            raise ParseError(f"unknown SIP version {version!r}", 505)
        if not sp1 or len(code) != 3 or not digits(code) or not 100 <= int(code) <= 699:
            raise ParseError(f"malformed status line: {start[:60]!r}")
        return Response(int(code), reason if sp2 else "", headers)
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError(f"malformed request line: {start[:80]!r}")
    method, uri, version = parts
    if not TOKEN.match(method):
        raise ParseError(f"malformed method {method[:30]!r}")
    if version.upper() != SIP_VERSION:
        raise ParseError(f"unknown SIP version {version!r}", 505)
    if uri.startswith("<") or ":" not in uri:
        raise ParseError(f"malformed Request-URI {uri[:60]!r}")
    return Request(method, uri, headers)


def _check_headers(message: Message, headers: Headers) -> None:
    for name in MANDATORY:
        if headers.get(name) is None:
            raise ParseError(f"missing {canonical(name)}")
    counts: dict[str, int] = {}
    for n, v in headers.items:
        low = n.lower()
        counts[low] = counts.get(low, 0) + 1
        if low in NAME_ADDR and not _balanced_quotes(v):
            raise ParseError(f"unterminated quoted string in {n}")
        if low in ("from", "to") and len(split_values(v)) > 1:
            raise ParseError(f"more than one value in {n}")
        if low == "via":
            for via in split_values(v):
                if not _VIA.match(via) or ";;" in via.replace(" ", ""):
                    raise ParseError(f"malformed Via {via[:60]!r}")
    for name in SINGLE:
        if counts.get(name, 0) > 1:
            raise ParseError(f"{canonical(name)} appears {counts[name]} times")
    cseq = headers.get("cseq") or ""
    number, _, method = cseq.strip().partition(" ")
    _int(number, "CSeq number", MAX_SEQ)
    if not TOKEN.match(method.strip()):
        raise ParseError(f"malformed CSeq {cseq[:40]!r}")
    if isinstance(message, Request) and method.strip() != message.method:
        raise ParseError(f"CSeq method {method.strip()!r} is not the request's {message.method!r}")
    if (mf := headers.get("max-forwards")) is not None:
        _int(mf, "Max-Forwards", 255)
    if (exp := headers.get("expires")) is not None:
        _int(exp, "Expires", 2**32 - 1)


def _body(headers: Headers, rest: bytes, lf_only: bool) -> bytes:
    cl = headers.get("content-length")
    if cl is None:
        return rest  # datagram: the body is the rest (stream transports frame before calling parse)
    length = _int(cl, "Content-Length", MAX_MESSAGE)
    if length > len(rest) and lf_only:
        # a message written with bare LF line ends, its Content-Length counted for CRLF: restore them
        crlf = rest.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if len(crlf) >= length:
            return crlf[:length]
    if length > len(rest):
        raise ParseError(f"Content-Length {length} is larger than the {len(rest)} bytes that follow")
    return rest[:length]  # octets after the body in a datagram are discarded (RFC 3261 §18.3)


# -- the small value parsers the UAC needs ----------------------------------------------------------

_PARAM = re.compile(r";\s*([^;=\s]+)(?:\s*=\s*(\"[^\"]*\"|[^;]*))?")


def params(value: str) -> dict[str, str]:
    """Header parameters after the value (outside <...>): `;tag=x;branch=y`, names lowercased."""
    tail = value[value.rfind(">") + 1 :] if ">" in value else value[value.find(";") :] if ";" in value else ""
    return {m.group(1).lower(): (m.group(2) or "").strip().strip('"') for m in _PARAM.finditer(tail)}


def tag(value: str | None) -> str | None:
    return None if value is None else params(value).get("tag")


def uri_of(value: str) -> str:
    """The URI of a name-addr or addr-spec header value."""
    if "<" in value and ">" in value:
        return value[value.index("<") + 1 : value.index(">")]
    return value.split(";", 1)[0].strip()


def cseq(message: Message) -> tuple[int, str]:
    number, _, method = (message.headers.get("cseq") or "0 ").strip().partition(" ")
    return int(number), method.strip()


def reason_q850(message: Message) -> int | None:
    """`Reason: Q.850;cause=N` (RFC 3326), the first Q.850 one."""
    for value in message.headers.get_all("reason"):
        for part in split_values(value):
            if part.strip().upper().startswith("Q.850"):
                cause = params(part).get("cause")
                if cause and digits(cause) and len(cause) <= 10:
                    return int(cause)
    return None
