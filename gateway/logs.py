"""JSON log lines on stderr with correlation ids (campaign, contact, Call-ID, wamid) and masked phones."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from gateway.domain.phones import mask

_STD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
_PHONE = re.compile(r"\+\d{7,15}")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _PHONE.sub(lambda m: mask(m.group(0)), record.getMessage()),
        }
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                out[key] = mask(value) if key == "phone" and isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = _PHONE.sub(lambda m: mask(m.group(0)), self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
