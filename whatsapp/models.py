"""Cloud API payloads: webhook notifications, send responses and error bodies.

Models accept unknown fields (Meta adds fields without notice) and keep status values as text: an
unknown status is the caller's to count and ignore, not a parse error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    messaging_product: str | None = None
    metadata: dict[str, Any] | None = None
    statuses: list[Status] = []
    messages: list[dict[str, Any]] = []
    errors: list[ApiError] = []


class Change(_Open):
    field: str | None = None
    value: Value = Field(default_factory=Value)


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

    def messages(self) -> list[dict[str, Any]]:
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
