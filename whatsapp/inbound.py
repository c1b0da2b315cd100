"""What customers send to the business number: Meta's `messages[]` in a webhook POST, read into `Inbound`.

Sans-IO and total (DESIGN habit 15): `inbound_messages` maps every message of a `Notification` to an
`Inbound` or counts it as skipped — never an exception.

Rules:
- a message is skipped (and counted) when it is not an object, or its `id` or `from` is missing, empty
  or not a string: without them it can be neither deduplicated nor answered;
- any other part that is missing or of the wrong type is `None` (empty for lists) and, when it was there
  but unreadable, is named in `unreadable`; `raw` keeps the message exactly as received, so nothing of an
  `unsupported` or unknown type, nor of a field Meta adds later, is lost;
- `type` is Meta's type string as given (unknown types kept); "unknown" when there is none;
- `text` and `payload` are the message's words and machine answer, whatever its type: `text.body`;
  a template quick reply's `button.text` / `button.payload`; an interactive `button_reply` or `list_reply`
  title / id; a Flow's `nfm_reply` body / `response_json` (kept raw, as the JSON text Meta sends);
  a media caption;
- `profile_name` is the name of the `value.contacts[]` entry whose `wa_id` is the sender;
  `phone_number_id` and `display_phone_number` come from `value.metadata`.
Messages come out in the order of the POST (entries, changes, messages); duplicates are kept — Meta
repeats, the caller deduplicates on `id`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .models import ApiError, Notification, Value

MEDIA_TYPES = frozenset({"image", "audio", "video", "document", "sticker"})
M = TypeVar("M", bound=BaseModel)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class Media(_Frozen):
    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None  # documents
    voice: bool | None = None  # audio: a voice note
    animated: bool | None = None  # stickers
    url: str | None = None  # given by newer API versions


class Location(_Frozen):
    latitude: float | None = None
    longitude: float | None = None
    name: str | None = None
    address: str | None = None
    url: str | None = None


class Reaction(_Frozen):
    message_id: str | None = None  # the wamid reacted to
    emoji: str | None = None  # empty or absent: the reaction was removed

    @property
    def removed(self) -> bool:
        return not self.emoji


class Context(_Frozen):
    id: str | None = None  # the wamid this message answers (ours, for a reply to a campaign message)
    from_: str | None = Field(default=None, alias="from")
    forwarded: bool = False
    frequently_forwarded: bool = False
    referred_product: dict[str, Any] | None = None


class Inbound(_Frozen):
    id: str
    from_: str = Field(alias="from")
    from_user_id: str | None = None  # Meta's business-scoped user id, where given
    timestamp: int | None = None
    type: str
    text: str | None = None
    payload: str | None = None
    interactive_type: str | None = None  # button_reply, list_reply, nfm_reply, ...
    media: Media | None = None
    location: Location | None = None
    contacts: list[Any] | None = None
    reaction: Reaction | None = None
    context: Context | None = None
    referral: dict[str, Any] | None = None
    order: dict[str, Any] | None = None
    errors: list[ApiError] = []
    profile_name: str | None = None
    phone_number_id: str | None = None
    display_phone_number: str | None = None
    unreadable: tuple[str, ...] = ()  # parts that were there but could not be read (still in `raw`)
    raw: dict[str, Any]


class InboundBatch(NamedTuple):
    messages: list[Inbound]
    skipped: int  # messages that were not objects or had no usable `id` / `from`


def inbound_messages(note: Notification) -> InboundBatch:
    out: list[Inbound] = []
    skipped = 0
    for entry in note.entry:
        for change in entry.changes:
            if "unreadable_value" in (change.model_extra or {}) and change.field in (None, "messages"):
                skipped += 1  # a messages change whose value was not an object
            value = change.value
            if not value.messages:
                continue
            meta = value.metadata or {}
            names = _profile_names(value)
            for msg in value.messages:
                inbound = _inbound(msg, meta, names)
                if inbound is None:
                    skipped += 1
                else:
                    out.append(inbound)
    return InboundBatch(out, skipped)


# -- one message ------------------------------------------------------------------------------------------


def _inbound(msg: Any, meta: dict[str, Any], names: dict[str, str]) -> Inbound | None:
    if not isinstance(msg, dict):
        return None
    wamid, sender = msg.get("id"), msg.get("from")
    if not (isinstance(wamid, str) and wamid and isinstance(sender, str) and sender):
        return None
    bad: list[str] = []
    kind = msg.get("type")
    if not isinstance(kind, str):
        if "type" in msg:
            bad.append("type")
        kind = "unknown"
    part = _Reader(msg, bad)
    fields: dict[str, Any] = {
        "id": wamid,
        "from": sender,
        "from_user_id": part.text("from_user_id"),
        "timestamp": part.epoch("timestamp"),
        "type": kind,
        "context": part.model("context", Context),
        "referral": part.obj("referral"),
        "errors": part.errors(),
        "profile_name": names.get(sender),
        "phone_number_id": _str(meta.get("phone_number_id")),
        "display_phone_number": _str(meta.get("display_phone_number")),
    }
    if kind == "text":
        fields["text"] = part.sub_text("text", "body")
    elif kind == "button":
        fields["text"] = part.sub_text("button", "text")
        fields["payload"] = part.sub_text("button", "payload")
    elif kind == "interactive":
        fields.update(part.interactive())
    elif kind in MEDIA_TYPES:
        media = part.model(kind, Media)
        fields["media"] = media
        fields["text"] = media.caption if media is not None else None
    elif kind == "location":
        fields["location"] = part.model("location", Location)
    elif kind == "contacts":
        fields["contacts"] = part.array("contacts")
    elif kind == "reaction":
        fields["reaction"] = part.model("reaction", Reaction)
    elif kind == "order":
        fields["order"] = part.obj("order")
    fields["unreadable"] = tuple(bad)
    fields["raw"] = msg
    try:
        return Inbound.model_validate(fields)
    except ValidationError:  # every part was checked above: kept only so that this function never raises
        return None


class _Reader:
    """Reads parts of one message dict; a part present but of the wrong shape is None and named in `bad`."""

    def __init__(self, msg: dict[str, Any], bad: list[str]) -> None:
        self.msg, self.bad = msg, bad

    def _flag(self, key: str) -> None:
        if key in self.msg and key not in self.bad:
            self.bad.append(key)

    def text(self, key: str) -> str | None:
        v = self.msg.get(key)
        if v is None or isinstance(v, str):
            return v
        self._flag(key)
        return None

    def epoch(self, key: str) -> int | None:
        v = self.msg.get(key)
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**12:
            return v
        if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 12:
            return int(v)
        self._flag(key)
        return None

    def obj(self, key: str) -> dict[str, Any] | None:
        v = self.msg.get(key)
        if v is None or isinstance(v, dict):
            return v
        self._flag(key)
        return None

    def array(self, key: str) -> list[Any] | None:
        v = self.msg.get(key)
        if v is None or isinstance(v, list):
            return v
        self._flag(key)
        return None

    def model(self, key: str, cls: type[M]) -> M | None:
        v = self.obj(key)
        if v is None:
            return None
        try:
            return cls.model_validate(v)
        except ValidationError:
            self._flag(key)
            return None

    def sub_text(self, key: str, sub: str) -> str | None:
        v = self.obj(key)
        if v is None:
            return None
        s = v.get(sub)
        if s is None or isinstance(s, str):
            return s
        self._flag(key)
        return None

    def errors(self) -> list[ApiError]:
        raw = self.array("errors")
        out: list[ApiError] = []
        for item in raw or []:
            try:
                out.append(ApiError.model_validate(item))
            except ValidationError:
                self._flag("errors")
        return out

    def interactive(self) -> dict[str, Any]:
        inter = self.obj("interactive")
        if inter is None:
            return {}
        kind = inter.get("type")
        if not isinstance(kind, str):
            self._flag("interactive")
            return {}
        reply = inter.get(kind)
        if not isinstance(reply, dict):
            if reply is not None:
                self._flag("interactive")
            return {"interactive_type": kind}
        if kind == "nfm_reply":
            text, payload = reply.get("body"), reply.get("response_json")
        else:  # button_reply, list_reply and any later reply of the same shape
            text, payload = reply.get("title"), reply.get("id")
        if not (text is None or isinstance(text, str)) or not (payload is None or isinstance(payload, str)):
            self._flag("interactive")
            text, payload = _str(text), _str(payload)
        return {"interactive_type": kind, "text": text, "payload": payload}


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _profile_names(value: Value) -> dict[str, str]:
    """wa_id → profile name, from `value.contacts[]` (whatever its shape: what cannot be read is left out)."""
    contacts = (value.model_extra or {}).get("contacts")
    names: dict[str, str] = {}
    if not isinstance(contacts, list):
        return names
    for c in contacts:
        if not isinstance(c, dict):
            continue
        wa_id, profile = c.get("wa_id"), c.get("profile")
        name = profile.get("name") if isinstance(profile, dict) else None
        if isinstance(wa_id, str) and isinstance(name, str):
            names.setdefault(wa_id, name)
    return names
