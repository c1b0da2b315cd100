"""Bus payloads (SPEC §3, §4): the pydantic models that validate commands and shape events.

They are the single source of the JSON Schemas and the AsyncAPI document in docs/.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from gateway.contract.strict_json import loads as strict_json
from gateway.domain.abandonment import AbandonWindow
from gateway.domain.answering import AmdSettings, DigitMap, GatherSettings
from gateway.domain.limits import Limits
from gateway.domain.phones import international
from gateway.domain.replies import ReplyRules
from gateway.domain.state import Mode
from gateway.domain.statuses import CampaignStatus, Channel, Profile, Status
from gateway.domain.windows import CallingWindow
from sip.uri import check_target

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_BULK_PAYLOAD_BYTES = 1024 * 1024  # a bulk dial/send (SPEC §4)
MAX_BULK_CONTACTS = 1000
BULK_KINDS = frozenset({"dial", "send"})
MAX_META_BYTES = 4 * 1024
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def _check_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if meta is not None and len(json.dumps(meta, separators=(",", ":")).encode()) > MAX_META_BYTES:
        raise ValueError(f"meta is larger than {MAX_META_BYTES} bytes")
    return meta


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _caller_number(value: str) -> str:
    number = international(value)
    if number is None:
        raise ValueError("not a phone number in international form (E.164 with +, e.g. +420212345678)")
    return number


CallerNumber = Annotated[
    str,
    Field(max_length=32, description="E.164 with + (spaces allowed); stored and sent normalised"),
    AfterValidator(_caller_number),
]
# a text that reaches a wire (SIP headers, the Cloud API, a file name): no control characters (C0, DEL, C1)
NO_CONTROLS = r"^[^\x00-\x1f\x7f-\x9f]+$"
CallerName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_CONTROLS)]
PromptName = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=NO_CONTROLS)]
MAX_TEMPLATE_TEXT = 1024  # Meta: a template's body is at most 1,024 characters, its parameters with it
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _connect_to(value: str) -> str:
    problem = check_target(value)
    if problem is not None:
        raise ValueError(problem)
    return value


ConnectTo = Annotated[
    str,
    Field(max_length=512, description="a SIP or tel URI (RFC 3261 §25, RFC 3966) the call is transferred to"),
    AfterValidator(_connect_to),
]


def _check_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Template components go to the Cloud API as given: every string in them without control characters
    (Meta refuses a new line or a tab in a parameter, 132018), every `text` within Meta's body limit."""

    def walk(value: Any, path: str) -> None:
        if isinstance(value, str):
            if _CONTROL.search(value):
                raise ValueError(f"{path} holds a control character")
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")
                if key == "text" and isinstance(item, str) and len(item) > MAX_TEMPLATE_TEXT:
                    raise ValueError(f"{path}.text is longer than {MAX_TEMPLATE_TEXT} characters")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    walk(components, "components")
    return components


class _CallerFields(_Strict):
    """The caller ID a dial (or a bulk entry, or a campaign) asks for; what is left out comes from the
    campaign, then from `sip.from_user` / `sip.from_display`."""

    caller_id: CallerNumber | None = None
    caller_name: CallerName | None = None
    caller_id_withheld: bool | None = None  # true: From anonymous (RFC 3323), Privacy: id


class PolicyIn(_Strict):
    max_attempts: int | None = Field(None, ge=1, le=100)
    delays_s: list[Annotated[float, Field(ge=0, le=30 * 86400)]] | None = Field(None, max_length=100)
    retry_on: list[Literal["rejected", "unreachable", "failed"]] | None = None
    ring_timeout_s: float | None = Field(None, gt=0, le=600)


class _Command(_Strict):
    command_id: Id
    campaign_id: Id
    meta: dict[str, Any] | None = None

    _meta = field_validator("meta")(_check_meta)


class _Entry(_Strict):
    """One contact of a bulk `dial`/`send`: its own id, number and meta; every other field is the command's."""

    contact_id: Id
    phone: str = Field(max_length=64)
    meta: dict[str, Any] | None = None

    _meta = field_validator("meta")(_check_meta)


class DialEntry(_Entry, _CallerFields):
    connect_to: ConnectTo | None = None
    prompt: PromptName | None = None


class SendEntry(_Entry):
    pass


class _ContactsCommand(_Command):
    """A `dial`/`send` names one contact (`contact_id`, `phone`) or carries `contacts` (bulk), not both."""

    contact_id: Id | None = None
    phone: str | None = Field(None, max_length=64)

    def check_shape(self) -> None:
        contacts = getattr(self, "contacts", None)
        if contacts is not None:
            if self.contact_id is not None or self.phone is not None:
                raise Rejection(
                    "invalid_field",
                    "contacts",
                    "a bulk command carries its contacts in `contacts`, not `contact_id`/`phone` as well",
                    self.command_id,
                )
            return
        for name in ("contact_id", "phone"):
            if getattr(self, name) is None:
                raise Rejection("missing_field", name, "Field required", self.command_id)


class _AnsweringFields(_Strict):
    """Who answered and what they pressed (docs/voice.md §6.3, §6.4): on a dial, over its campaign's."""

    amd: AmdSettings | None = Field(
        None, description="answering-machine detection: app_amd's parameters, on_machine, wait"
    )
    gather: GatherSettings | None = Field(
        None, description="digits after the prompt: max_digits, finish_on_key, timeout_s"
    )
    digits: DigitMap | None = Field(
        None, description="what was pressed → confirm, opt_out, transfer or retry (a key is the whole input)"
    )


class DialCommand(_ContactsCommand, _CallerFields, _AnsweringFields):
    kind: Literal["dial"] = "dial"
    contacts: list[DialEntry] | None = Field(None, min_length=1, max_length=MAX_BULK_CONTACTS)
    mode: Mode = Mode.PROGRESSIVE
    policy: PolicyIn | None = None
    connect_to: ConnectTo | None = None
    wrapup: bool = False
    bcw_s: float = Field(0.0, ge=0, le=3600)
    profile: Profile = Profile.MLUVII
    prompt: PromptName | None = None

    def entries(self) -> list[DialEntry]:
        if self.contacts is not None:
            return self.contacts
        assert self.contact_id is not None and self.phone is not None
        return [
            DialEntry.model_construct(
                contact_id=self.contact_id,
                phone=self.phone,
                meta=self.meta,
                connect_to=self.connect_to,
                prompt=self.prompt,
                caller_id=self.caller_id,
                caller_name=self.caller_name,
                caller_id_withheld=self.caller_id_withheld,
            )
        ]


class Template(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)  # Meta adds template fields over time
    name: str = Field(min_length=1, max_length=512, pattern=NO_CONTROLS)
    language: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=NO_CONTROLS)] | dict[str, Any]
    components: Annotated[list[dict[str, Any]], AfterValidator(_check_components)] = []
    category: Literal["MARKETING", "UTILITY", "AUTHENTICATION"] | None = Field(
        None,
        description="not sent to Meta: a MARKETING template is not sent to a number that stopped"
        " marketing messages (Meta's user_preferences)",
    )


class SendCommand(_ContactsCommand):
    kind: Literal["send"] = "send"
    contacts: list[SendEntry] | None = Field(None, min_length=1, max_length=MAX_BULK_CONTACTS)
    template: Template
    policy: PolicyIn | None = None
    profile: Profile = Profile.MLUVII

    def entries(self) -> list[SendEntry]:
        if self.contacts is not None:
            return self.contacts
        assert self.contact_id is not None and self.phone is not None
        return [SendEntry(contact_id=self.contact_id, phone=self.phone, meta=self.meta)]


class CancelCommand(_Command):
    kind: Literal["cancel"] = "cancel"
    contact_id: Id | None = None


class RemoveCommand(_Command):
    kind: Literal["remove"] = "remove"
    contact_id: Id


class BlacklistCommand(_Strict):
    kind: Literal["blacklist"] = "blacklist"
    command_id: Id
    campaign_id: Id | None = None  # the blacklist is global; a campaign id is accepted and echoed
    meta: dict[str, Any] | None = None
    phone: str = Field(min_length=1, max_length=64)
    action: Literal["add", "remove"]

    _meta = field_validator("meta")(_check_meta)


class BudgetIn(_Strict):
    max_talk_minutes: float | None = Field(None, ge=0)
    max_contacts: int | None = Field(None, ge=0)


class CampaignCommand(_Command, _CallerFields, _AnsweringFields):
    kind: Literal["campaign"] = "campaign"
    action: Literal["create", "start", "pause", "resume", "finish"]
    start_at: AwareDatetime | None = None
    budget: BudgetIn | None = None
    max_cps: float | None = Field(None, gt=0, le=10_000)
    max_concurrent: int | None = Field(None, ge=1, le=100_000)
    replies: ReplyRules | None = Field(
        None,
        description="what a customer's WhatsApp reply means: match context|sender, and per outcome"
        " (confirm, decline, opt_out) quick-reply buttons and keywords per language",
    )
    # lawful calling (docs/lawful-calling.md)
    window: CallingWindow | None = Field(
        None, description="the callee's local calling hours: preset (us_tcpa, fr_2023), weekly, holidays, margin_s"
    )
    limits: Limits | None = Field(
        None, description="attempt caps per number over every campaign: max_attempts per_days, after_* holds"
    )
    abandon_after_s: float | None = Field(None, gt=0, le=60, description="predictive: the longest wait for an operator")
    abandon_prompt: PromptName | None = None
    max_abandon_rate: float | None = Field(None, ge=0, le=1)
    abandon_min_answers: int | None = Field(
        None, ge=1, le=1_000_000, description="the live answers below which the rate alone does not pause (100)"
    )
    abandon_window: AbandonWindow | None = None
    operators: int | None = Field(None, ge=0, le=100_000, description="predictive: operators on this campaign")


PRESENCE_SIGNALS = ("available", "unavailable")  # an operator for the campaign's calls, not for one contact


class OperatorCommand(_Command):
    kind: Literal["operator"] = "operator"
    contact_id: Id | None = None  # required, except with `available`/`unavailable`
    signal: Literal[
        "assigned",
        "accepted",
        "rejected",
        "call_now",
        "no_operator",
        "connected",
        "wrapup_done",
        "available",
        "unavailable",
    ]
    operator_id: str | None = Field(None, max_length=128, pattern=NO_CONTROLS)

    def check_shape(self) -> None:
        if self.signal in PRESENCE_SIGNALS:
            if self.operator_id is None:
                raise Rejection("missing_field", "operator_id", "Field required", self.command_id)
        elif self.contact_id is None:
            raise Rejection("missing_field", "contact_id", "Field required", self.command_id)


Command = (
    DialCommand | SendCommand | CancelCommand | RemoveCommand | BlacklistCommand | CampaignCommand | OperatorCommand
)
COMMANDS: dict[str, type[BaseModel]] = {
    "dial": DialCommand,
    "send": SendCommand,
    "cancel": CancelCommand,
    "remove": RemoveCommand,
    "blacklist": BlacklistCommand,
    "campaign": CampaignCommand,
    "operator": OperatorCommand,
}


class CommandError(_Strict):
    code: str
    field: str | None = None
    message: str


class RefusedContact(_Strict):
    """A contact of a bulk command that was not taken, and why (the others were)."""

    contact_id: str
    code: str
    field: str | None = None
    message: str


class CommandResult(_Strict):
    schema_: Literal["telgate.command-result/1"] = Field("telgate.command-result/1", alias="schema")
    command_id: str | None
    kind: str | None = None
    campaign_id: str | None = None
    contact_id: str | None = None
    accepted: bool
    duplicate: bool = False
    error: CommandError | None = None
    # bulk dial/send: how many contacts were created (of them, how many with an invalid number, which
    # become `invalid_record`), and each contact that was refused with its code
    contacts_accepted: int | None = None
    contacts_invalid: int | None = None
    contacts_refused: list[RefusedContact] | None = None
    gateway_id: str
    occurred_at: datetime

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SignalEvidence(BaseModel):
    """The raw evidence behind a status: SIP or WhatsApp fields, or the gateway's own reason."""

    model_config = ConfigDict(extra="allow", frozen=True)
    source: str
    kind: str
    sip_code: int | None = None
    reason: str | None = None
    q850_cause: int | None = None
    call_id: str | None = None
    wa_message_id: str | None = None
    wa_error_code: int | None = None
    wa_error_title: str | None = None
    status_timestamp: str | None = None
    reply: dict[str, str] | None = None  # `replied`: the reply's type, text or payload, and its outcome
    # who answered (docs/voice.md §6.3): Twilio's AnsweredBy, app_amd's cause, ms from the answer
    answered_by: str | None = None
    amd_cause: str | None = None
    amd_ms: int | None = None
    digits: str | None = None  # what was pressed (§6.4)
    outcome: str | None = None  # what the call's answer or digits decided: machine, message, confirm, opt_out…


class ContactStatusEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    schema_: Literal["telgate.contact-status/1"] = Field("telgate.contact-status/1", alias="schema")
    event_id: str
    sequence: int = Field(ge=1)
    occurred_at: datetime
    gateway_id: str
    campaign_id: str
    contact_id: str
    channel: Channel
    status: Status
    label: str
    previous_status: Status | None
    final: bool
    attempt: int
    max_attempts: int
    retry_at: datetime | None = None
    phone: str | None
    signal: SignalEvidence
    meta: dict[str, Any] | None = None


class InboundMedia(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    caption: str | None = None
    filename: str | None = None


class InboundContext(BaseModel):
    """The message this one answers: Meta's context, and when its wamid is one of ours the contact."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    id: str | None = None  # the wamid answered (a reaction's message_id)
    from_: str | None = Field(None, alias="from")
    forwarded: bool | None = None
    frequently_forwarded: bool | None = None
    campaign_id: str | None = None
    contact_id: str | None = None


class InboundReply(BaseModel):
    """What the gateway made of it: the contact it answered and the campaign's outcome."""

    model_config = ConfigDict(frozen=True)
    campaign_id: str
    contact_id: str
    outcome: Literal["confirm", "decline", "opt_out", "other"]
    status: Status  # the contact's status after it (`replied`, or what it was when absorbed)


class InboundMessage(BaseModel):
    """A message a customer sent to the business number (SPEC §3, `P/v1/evt/inbound/whatsapp/{id}`).
    Delivered at least once: deduplicate on `wamid` (the gateway does too, Meta repeats)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    schema_: Literal["telgate.inbound-message/1"] = Field("telgate.inbound-message/1", alias="schema")
    event_id: str
    wamid: str
    phone_number_id: str
    gateway_id: str
    from_: str = Field(alias="from", description="E.164 with +")
    profile_name: str | None = None
    sent_at: datetime | None = Field(None, description="Meta's timestamp of the message")
    received_at: datetime
    type: str = Field(description="text, button, interactive, image, audio, video, document, sticker, location,"
                      " contacts, reaction, order, unsupported, …: Meta's type as given")  # fmt: skip
    text: str | None = None
    payload: str | None = None
    media: InboundMedia | None = None
    location: dict[str, Any] | None = None
    contacts: list[dict[str, Any]] | None = None
    reaction: dict[str, Any] | None = None
    context: InboundContext | None = None
    referral: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None
    raw: dict[str, Any] | None = Field(None, description="the message as Meta sent it, for types not modelled")
    reply: InboundReply | None = None


class WhatsAppNotice(BaseModel):
    """One of Meta's notices about the account (SPEC §3, `P/v1/evt/notice/whatsapp/{id}`): user
    preferences, template status and quality, account and phone-number updates — with what it did."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    schema_: Literal["telgate.whatsapp-notice/1"] = Field("telgate.whatsapp-notice/1", alias="schema")
    event_id: str
    gateway_id: str
    phone_number_id: str
    field: str
    event: str | None = None
    received_at: datetime
    value: dict[str, Any]
    effect: str | None = Field(None, description="what the gateway did: marketing_opt_out, campaigns_paused, …")
    campaigns: list[str] | None = None


_EVIDENCE_FIELDS: tuple[str, ...] = tuple(n for n in SignalEvidence.model_fields if n not in ("source", "kind"))
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@functools.lru_cache(maxsize=64)  # a batch stamps all its events with one `now`
def iso(dt: datetime | None) -> str | None:
    """A UTC timestamp as pydantic writes it (`…T23:00:00.123Z`)."""
    if dt is None:
        return None
    text = dt.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def encode_contact_event(
    *,
    event_id: str,
    sequence: int,
    occurred_at: datetime,
    gateway_id: str,
    campaign_id: str,
    contact_id: str,
    channel: str,
    status: str,
    label: str,
    previous_status: str | None,
    final: bool,
    attempt: int,
    max_attempts: int,
    retry_at: datetime | None,
    phone: str | None,
    evidence: dict[str, Any],
    meta: dict[str, Any] | None,
) -> bytes:
    """A ContactStatusEvent as JSON without building the model (the hot path of every status change):
    the same document `ContactStatusEvent.model_dump_json(by_alias=True)` writes, field for field (a
    property test holds the two together; the tests validate published events against the model)."""
    signal: dict[str, Any] = {"source": evidence.get("source"), "kind": evidence.get("kind")}
    for name in _EVIDENCE_FIELDS:
        signal[name] = evidence.get(name)
    for name, value in evidence.items():
        if name not in signal and value is not None:
            signal[name] = value
    return _dumps(
        {
            "schema": "telgate.contact-status/1",
            "event_id": event_id,
            "sequence": sequence,
            "occurred_at": iso(occurred_at),
            "gateway_id": gateway_id,
            "campaign_id": campaign_id,
            "contact_id": contact_id,
            "channel": channel,
            "status": status,
            "label": label,
            "previous_status": previous_status,
            "final": final,
            "attempt": attempt,
            "max_attempts": max_attempts,
            "retry_at": iso(retry_at),
            "phone": phone,
            "signal": signal,
            "meta": meta,
        }
    ).encode()


class CampaignStatusEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    schema_: Literal["telgate.campaign-status/1"] = Field("telgate.campaign-status/1", alias="schema")
    event_id: str
    occurred_at: datetime
    campaign_id: str
    status: CampaignStatus
    previous_status: CampaignStatus | None
    reason: str | None = None
    counts: dict[str, int]


class Presence(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    state: Literal["online", "draining", "offline"]
    version: str
    started_at: datetime
    epoch: int
    pbx: Literal["up", "down", "off"]
    whatsapp: Literal["up", "down", "off"]


class Rejection(Exception):
    """A command that fails validation: changes nothing, answered with `CommandError`."""

    def __init__(self, code: str, field: str | None, message: str, command_id: str | None = None) -> None:
        super().__init__(message)
        self.error = CommandError(code=code, field=field, message=message)
        self.command_id = command_id


_CODES = {"missing": "missing_field", "extra_forbidden": "unknown_field"}


def parse_command(kind: str, payload: bytes) -> Command:
    """bytes from `P/v1/cmd/{kind}` → a validated command, or `Rejection` naming the field."""
    limit = MAX_BULK_PAYLOAD_BYTES if kind in BULK_KINDS else MAX_PAYLOAD_BYTES
    if len(payload) > limit:
        raise Rejection(
            "payload_too_large",
            None,
            f"payload is {len(payload)} bytes; the limit is {limit}",
            _command_id_of(payload) if len(payload) <= 4 * MAX_BULK_PAYLOAD_BYTES else None,
        )
    try:
        raw = strict_json(payload)
    except ValueError as exc:  # NotJson: says what and where
        raise Rejection("invalid_json", None, f"payload is not RFC 8259 JSON in UTF-8: {exc}") from exc
    if not isinstance(raw, dict):
        raise Rejection("invalid_json", None, "payload must be a JSON object")
    command_id = _readable_id(raw.get("command_id"))
    model = COMMANDS.get(kind)
    if model is None:
        raise Rejection("unknown_kind", "kind", f"unknown command kind {kind!r}; known: {sorted(COMMANDS)}", command_id)
    if kind in BULK_KINDS and len(payload) > MAX_PAYLOAD_BYTES and "contacts" not in raw:
        raise Rejection(
            "payload_too_large",
            None,
            f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES} ({MAX_BULK_PAYLOAD_BYTES} for a bulk"
            " command with `contacts`)",
            command_id,
        )
    if "kind" in raw and raw["kind"] != kind:
        raise Rejection(
            "invalid_field", "kind", f"payload kind {raw['kind']!r} does not match topic kind {kind!r}", command_id
        )
    try:
        cmd: Command = model.model_validate(raw)  # type: ignore[assignment]
    except ValidationError as exc:
        err = exc.errors()[0]
        raise Rejection(
            _CODES.get(err["type"], "invalid_field"), field_path(err["loc"]), err["msg"], command_id
        ) from exc
    if isinstance(cmd, DialCommand | SendCommand | OperatorCommand):
        cmd.check_shape()
    return cmd


def _command_id_of(payload: bytes) -> str | None:
    """The command_id of a payload refused for its size, so the backend can tell which command it was."""
    try:
        raw = strict_json(payload)
    except ValueError:
        return None
    return _readable_id(raw.get("command_id")) if isinstance(raw, dict) else None


def _readable_id(value: Any) -> str | None:
    """A command id echoed in a refusal: only one that is an id (a backend matches it; anything else could
    be 1 MB of control characters)."""
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


_ID = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))


def check_response_topic(topic: str | None, prefix: str) -> str | None:
    """A command's MQTT 5 Response Topic, where its result is published (SPEC §3): a topic name a
    publisher may use, outside the gateway's own namespaces (the broker's ACL lets telgate write there,
    and consumers trust those topics as events and presence). None, or what is wrong with it."""
    if topic is None:
        return None
    problem: str | None = None
    if not topic:
        problem = "is empty"
    elif "#" in topic or "+" in topic:
        problem = "holds a wildcard (# or +)"
    elif topic.startswith("$"):
        problem = "starts with $ (the broker's own topics)"
    elif any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000 or c == "\ufeff" for c in topic):
        problem = "holds a control character or a character MQTT forbids"
    elif len(topic.encode("utf-8", "surrogatepass")) > 65535:
        problem = "is longer than 65,535 bytes"
    elif any(topic == ns.rstrip("/") or topic.startswith(ns) for ns in (f"{prefix}/v1/evt/", f"{prefix}/v1/gateways/")):
        problem = f"is inside the gateway's own namespace ({prefix}/v1/evt/, {prefix}/v1/gateways/)"
    return None if problem is None else f"the Response Topic {problem}"


def field_path(loc: tuple[int | str, ...]) -> str | None:
    """pydantic's error location as a backend writes it: `contacts[516].phone`, `policy.max_attempts`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None
