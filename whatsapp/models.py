"""Cloud API payloads: webhook notifications, send responses and error bodies.

Models accept unknown fields (Meta adds fields without notice) and keep status values as text: an
unknown status is the caller's to count and ignore, not a parse error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class ErrorData(_Open):
    details: str | None = None


class ApiError(_Open):
    code: int | None = None
    title: str | None = None
    message: str | None = None
    type: str | None = None
    error_subcode: int | None = None
    error_data: ErrorData | None = None
    fbtrace_id: str | None = None

    @property
    def text(self) -> str:
        return self.title or self.message or ""


class Status(_Open):
    id: str
    status: str
    timestamp: str | int | None = None
    recipient_id: str | None = None
    biz_opaque_callback_data: str | None = None
    errors: list[ApiError] = []


class Value(_Open):
    """One change's value: statuses, customers' messages (whatsapp/inbound.py reads them) or, for the other
    subscription fields, a notice's own keys (kept as extra fields; whatsapp/notices.py reads them).

    Messages are kept as given, whatever their shape: each is read — or skipped and counted — on its own,
    so one unreadable message does not refuse the POST and the statuses beside it. A `metadata` or
    `messaging_product` of another type is dropped rather than refusing the POST."""

    messaging_product: str | None = None
    metadata: dict[str, Any] | None = None
    statuses: list[Status] = []
    messages: list[Any] = []
    errors: list[ApiError] = []

    @field_validator("messaging_product", mode="before")
    @classmethod
    def _text_or_none(cls, v: Any) -> Any:
        return v if isinstance(v, str) else None

    @field_validator("metadata", mode="before")
    @classmethod
    def _object_or_none(cls, v: Any) -> Any:
        return v if isinstance(v, dict) else None

    @field_validator("messages", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return v if isinstance(v, list) else [v]  # not a list: one message (read, or skipped and counted)


class Change(_Open):
    """A value that is not an object (never documented) is kept as `unreadable_value` beside an empty
    `Value`: the notice reader reports it, the rest of the POST is read."""

    field: str | None = None
    value: Value = Field(default_factory=Value)

    @model_validator(mode="before")
    @classmethod
    def _value_kept(cls, data: Any) -> Any:
        if isinstance(data, dict) and "value" in data and not isinstance(data["value"], dict):
            return {**data, "value": {}, "unreadable_value": data["value"]}
        return data


class Entry(_Open):
    id: str | None = None
    changes: list[Change] = []


class Notification(_Open):
    object: str | None = None
    entry: list[Entry] = []

    def statuses(self) -> list[Status]:
        return [s for e in self.entry for c in e.changes for s in c.value.statuses]

    def errors(self) -> list[ApiError]:
        return [err for e in self.entry for c in e.changes for err in c.value.errors]

    def messages(self) -> list[Any]:
        """Customers' messages as given (whatsapp/inbound.py reads them into `Inbound`)."""
        return [m for e in self.entry for c in e.changes for m in c.value.messages]


class SentMessage(_Open):
    id: str
    message_status: str | None = None


class SendResponse(_Open):
    messaging_product: str | None = None
    contacts: list[dict[str, Any]] = []
    messages: list[SentMessage]


class ErrorBody(_Open):
    error: ApiError
