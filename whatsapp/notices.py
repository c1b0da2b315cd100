"""Meta's notices: the WhatsApp Business Account subscription fields other than `messages`, read into typed values.

Sans-IO and total (DESIGN habit 15): `notices` maps every change of a `Notification` whose `field` is not
"messages" to a `Notice` or counts it as skipped — never an exception. Payloads as in Meta's Webhooks
reference for the WhatsApp Business Account object (one `value` per change):

- `user_preferences` → `UserPreferenceNotice` per entry of `user_preferences[]`: `wa_id`, `detail`,
  `category` ("marketing_messages"), `value` ("stop", "resume", ...), `timestamp`; and `metadata`;
- `message_template_status_update` → `TemplateStatusNotice`: `event` (APPROVED, REJECTED, PAUSED, DISABLED,
  REINSTATED, FLAGGED, PENDING_DELETION, ARCHIVED, ...), `message_template_id` / `_name` / `_language` /
  `_category`, `reason`, `other_info` {title, description}, `disable_info`, `rejection_info`;
- `message_template_quality_update` → `TemplateQualityNotice`: `previous_quality_score`,
  `new_quality_score` (GREEN, YELLOW, RED, UNKNOWN), template id / name / language;
- `template_category_update` → `TemplateCategoryNotice`: template id / name / language,
  `previous_category`, `new_category`, `correct_category`, `category_update_timestamp`;
- `account_update` → `AccountUpdateNotice`: `phone_number`, `event` (ACCOUNT_RESTRICTION,
  ACCOUNT_VIOLATION, DISABLED_UPDATE, ACCOUNT_DELETED, VERIFIED_ACCOUNT, ...), `restriction_info[]`,
  `violation_info`, `ban_info`;
- `phone_number_quality_update` → `PhoneQualityNotice`: `display_phone_number`, `event` (UPGRADE,
  DOWNGRADE, FLAGGED, UNFLAGGED, ...), `current_limit`, `old_limit`, `max_daily_conversations_per_business`;
- `account_alerts` → `AccountAlertNotice`: `entity_type`, `entity_id`, `alert_info` {alert_severity,
  alert_status, alert_type, alert_description};
- any other field → `GenericNotice`: the field name and the value as given.

Rules:
- one `UserPreferenceNotice` per entry of `user_preferences[]`; an entry that is not an object or names no
  user (`wa_id` / `user_id`) is skipped and counted;
- a known field whose value is not an object is skipped and counted; an unknown field gives a
  `GenericNotice` whatever its value;
- every other part that is missing or of another type is `None`; when it was there but unreadable it is
  named in `unreadable`. Ids Meta sends as numbers (`message_template_id`) are kept as text. Enumerated
  values (`event`, scores, limits) are kept as given: an unknown one is the caller's to count.
- every notice carries `field`, the account (`waba_id` = `entry[].id`), the entry's `time` and `raw`, the
  value as received, so a field Meta adds later is not lost.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict

from .models import Change, Notification

INBOUND_FIELD = "messages"


class _Notice(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    field: str
    waba_id: str | None = None
    time: int | None = None
    unreadable: tuple[str, ...] = ()
    raw: Any = None


class UserPreferenceNotice(_Notice):
    kind: Literal["user_preference"] = "user_preference"
    wa_id: str | None = None
    user_id: str | None = None  # Meta's business-scoped user id, where given
    category: str | None = None  # "marketing_messages"
    value: str | None = None  # "stop", "resume" (and "signup" where given)
    detail: str | None = None
    timestamp: int | None = None
    phone_number_id: str | None = None
    display_phone_number: str | None = None

    @property
    def stopped(self) -> bool:
        return self.category == "marketing_messages" and self.value == "stop"


class TemplateStatusNotice(_Notice):
    kind: Literal["template_status"] = "template_status"
    event: str | None = None
    message_template_id: str | None = None
    message_template_name: str | None = None
    message_template_language: str | None = None
    message_template_category: str | None = None
    reason: str | None = None
    title: str | None = None  # other_info.title
    description: str | None = None  # other_info.description
    other_info: dict[str, Any] | None = None
    disable_info: dict[str, Any] | None = None
    rejection_info: dict[str, Any] | None = None


class TemplateQualityNotice(_Notice):
    kind: Literal["template_quality"] = "template_quality"
    previous_quality_score: str | None = None
    new_quality_score: str | None = None
    message_template_id: str | None = None
    message_template_name: str | None = None
    message_template_language: str | None = None


class TemplateCategoryNotice(_Notice):
    kind: Literal["template_category"] = "template_category"
    message_template_id: str | None = None
    message_template_name: str | None = None
    message_template_language: str | None = None
    previous_category: str | None = None
    new_category: str | None = None
    correct_category: str | None = None  # an impending change
    category_update_timestamp: int | None = None


class AccountUpdateNotice(_Notice):
    kind: Literal["account_update"] = "account_update"
    event: str | None = None
    phone_number: str | None = None
    restriction_info: list[dict[str, Any]] | None = None
    violation_info: dict[str, Any] | None = None
    ban_info: dict[str, Any] | None = None


class PhoneQualityNotice(_Notice):
    kind: Literal["phone_quality"] = "phone_quality"
    event: str | None = None
    display_phone_number: str | None = None
    current_limit: str | None = None
    old_limit: str | None = None
    max_daily_conversations_per_business: str | None = None


class AccountAlertNotice(_Notice):
    kind: Literal["account_alert"] = "account_alert"
    entity_type: str | None = None
    entity_id: str | None = None
    alert_severity: str | None = None
    alert_status: str | None = None
    alert_type: str | None = None
    alert_description: str | None = None


class GenericNotice(_Notice):
    kind: Literal["other"] = "other"


Notice = (
    UserPreferenceNotice
    | TemplateStatusNotice
    | TemplateQualityNotice
    | TemplateCategoryNotice
    | AccountUpdateNotice
    | PhoneQualityNotice
    | AccountAlertNotice
    | GenericNotice
)


class NoticeBatch(NamedTuple):
    notices: list[Notice]
    skipped: int  # changes (or user_preferences entries) that could not be read


def notices(note: Notification) -> NoticeBatch:
    out: list[Notice] = []
    skipped = 0
    for entry in note.entry:
        extra = entry.model_extra or {}
        common: dict[str, Any] = {"waba_id": entry.id, "time": _epoch(extra.get("time"))}
        for change in entry.changes:
            if change.field is None or change.field == INBOUND_FIELD:
                continue
            read, lost = _notices(change, common)
            out.extend(read)
            skipped += lost
    return NoticeBatch(out, skipped)


# -- one change -------------------------------------------------------------------------------------------

_TEMPLATE = ("message_template_id", "message_template_name", "message_template_language")


def _notices(change: Change, common: dict[str, Any]) -> tuple[list[Notice], int]:
    field = change.field or ""
    extra = change.model_extra or {}
    if "unreadable_value" in extra:
        if field in _READERS or field == "user_preferences":
            return [], 1
        return [GenericNotice(field=field, raw=extra["unreadable_value"], **common)], 0
    raw = change.value.model_dump(mode="json", exclude_unset=True)
    base = {"field": field, "raw": raw, **common}
    if field == "user_preferences":
        return _user_preferences(raw, base)
    reader = _READERS.get(field)
    if reader is None:
        return [GenericNotice(**base)], 0
    cls, texts, ints, objects, lists = reader
    r = _Reader(raw)
    fields: dict[str, Any] = {k: r.text(k) for k in texts} | {k: r.epoch(k) for k in ints}
    fields |= {k: r.obj(k) for k in objects} | {k: r.objects(k) for k in lists}
    if cls is TemplateStatusNotice:
        info = fields.get("other_info") or {}
        fields["title"], fields["description"] = _str(info.get("title")), _str(info.get("description"))
    if cls is AccountAlertNotice:
        alert = r.obj("alert_info") or {}
        sub = _Reader(alert)
        for k in ("alert_severity", "alert_status", "alert_type", "alert_description"):
            fields[k] = sub.text(k)
        r.bad.extend(f"alert_info.{k}" for k in sub.bad)
    return [cls(**base, **fields, unreadable=tuple(r.bad))], 0


_Typed = (
    TemplateStatusNotice
    | TemplateQualityNotice
    | TemplateCategoryNotice
    | AccountUpdateNotice
    | PhoneQualityNotice
    | AccountAlertNotice
)
_READERS: dict[str, tuple[type[_Typed], tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # field: (class, text keys, epoch keys, object keys, list-of-object keys)
    "message_template_status_update": (
        TemplateStatusNotice,
        ("event", *_TEMPLATE, "message_template_category", "reason"),
        (),
        ("other_info", "disable_info", "rejection_info"),
        (),
    ),
    "message_template_quality_update": (
        TemplateQualityNotice,
        ("previous_quality_score", "new_quality_score", *_TEMPLATE),
        (),
        (),
        (),
    ),
    "template_category_update": (
        TemplateCategoryNotice,
        (*_TEMPLATE, "previous_category", "new_category", "correct_category"),
        ("category_update_timestamp",),
        (),
        (),
    ),
    "account_update": (
        AccountUpdateNotice,
        ("event", "phone_number"),
        (),
        ("violation_info", "ban_info"),
        ("restriction_info",),
    ),
    "phone_number_quality_update": (
        PhoneQualityNotice,
        ("event", "display_phone_number", "current_limit", "old_limit", "max_daily_conversations_per_business"),
        (),
        (),
        (),
    ),
    "account_alerts": (AccountAlertNotice, ("entity_type", "entity_id"), (), (), ()),
}


def _user_preferences(raw: dict[str, Any], base: dict[str, Any]) -> tuple[list[Notice], int]:
    prefs = raw.get("user_preferences")
    if not isinstance(prefs, list):
        return [], 1
    meta = raw.get("metadata") or {}
    where = {
        "phone_number_id": _str(meta.get("phone_number_id")),
        "display_phone_number": _str(meta.get("display_phone_number")),
    }
    out: list[Notice] = []
    skipped = 0
    for pref in prefs:
        if not isinstance(pref, dict):
            skipped += 1
            continue
        r = _Reader(pref)
        fields: dict[str, Any] = {k: r.text(k) for k in ("wa_id", "user_id", "category", "value", "detail")}
        if fields["wa_id"] is None and fields["user_id"] is None:
            skipped += 1
            continue
        fields["timestamp"] = r.epoch("timestamp")
        out.append(UserPreferenceNotice(**{**base, "raw": pref}, **where, **fields, unreadable=tuple(r.bad)))
    return out, skipped


class _Reader:
    """Parts of one value; a part present but of another type is None and named in `bad`."""

    def __init__(self, value: dict[str, Any]) -> None:
        self.value = value
        self.bad: list[str] = []

    def _flag(self, key: str) -> None:
        if key in self.value and key not in self.bad:
            self.bad.append(key)

    def text(self, key: str) -> str | None:
        v = self.value.get(key)
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, int) and not isinstance(v, bool):  # ids and limits Meta sends as numbers
            return str(v)
        self._flag(key)
        return None

    def epoch(self, key: str) -> int | None:
        v = _epoch(self.value.get(key))
        if v is None:
            self._flag(key)
        return v

    def obj(self, key: str) -> dict[str, Any] | None:
        v = self.value.get(key)
        if v is None or isinstance(v, dict):
            return v
        self._flag(key)
        return None

    def objects(self, key: str) -> list[dict[str, Any]] | None:
        v = self.value.get(key)
        if v is None:
            return None
        if isinstance(v, list) and all(isinstance(x, dict) for x in v):
            return v
        self._flag(key)
        return None


def _epoch(v: Any) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**13:
        return v
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 13:
        return int(v)
    return None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None
