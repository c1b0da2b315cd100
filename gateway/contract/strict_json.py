"""RFC 8259 JSON between systems, and nothing else: the one parser of every payload a backend sends.

Python's `json` is lenient where an interoperable reader must not be, and each leniency was a poison
command (SPEC §3 "Hostile input", DESIGN habit 15):
- it reads UTF-16 and UTF-32 (`json.detect_encoding`) and lone surrogates (`"\\ud800"`), which no
  UTF-8 encoder writes back: every event of such a contact failed to encode;
- it reads `NaN`, `Infinity` and numbers beyond a double (`1e999` becomes `inf`): the same;
- it takes the last of duplicate keys, where another reader takes the first;
- it recurses once per nesting level in C: 50,000 levels raised RecursionError and stopped the process.

`loads` maps every input to a value or `NotJson`, whose message names what is wrong and where. The
checks that cost a Python call per item run only where the cheap test says the item is there: a
payload without `\\u` escapes has no surrogate to look for, one with at most `MAX_DEPTH` brackets
cannot nest too deep.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

MAX_DEPTH = 32
_DOUBLE_MAX = sys.float_info.max

# a JSON string, so that brackets inside strings are not counted as nesting
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class NotJson(ValueError):
    """The input is not RFC 8259 JSON in UTF-8; the message says what and where."""


def _constant(name: str) -> Any:
    raise NotJson(f"{name} is not a JSON value (RFC 8259)")


def _float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise NotJson(f"the number {text[:40]} is outside a double's range")
    return value


def _int(text: str) -> int:
    value = int(text)  # more than 4,300 digits: Python's own limit raises ValueError, a NotJson below
    if len(text) > 308 and abs(value) > _DOUBLE_MAX:
        raise NotJson(f"the number {text[:40]}… is outside a double's range")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise NotJson(f"duplicate key {key[:64]!r} in an object")
            seen.add(key)
    return obj


_decoder = json.JSONDecoder(parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_object)


def _depth(text: str) -> None:
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = 0
    for char in brackets:
        if char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise NotJson(f"nested deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _scalar_values(value: Any, path: str) -> None:
    """Raise NotJson naming the first string (or key) that holds a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise NotJson(f"the string at {path or '$'} is not Unicode scalar values (a lone surrogate)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _scalar_values(key, path)
            _scalar_values(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _scalar_values(item, f"{path}[{index}]")


def decode_utf8(data: bytes | bytearray | memoryview) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJson(f"not UTF-8 at byte {exc.start}") from None


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """RFC 8259 JSON text (UTF-8 bytes, or a str) → its value; `NotJson` for anything else."""
    text = data if isinstance(data, str) else decode_utf8(data)
    _depth(text)
    try:
        value = _decoder.decode(text)
    except NotJson:
        raise
    except RecursionError:  # the depth scan ran first; a belt for what it could not see
        raise NotJson(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError names the line and column; int() its digit limit
        raise NotJson(str(exc)) from None
    if _SURROGATE_ESCAPE.search(text):
        _scalar_values(value, "")
    return value
