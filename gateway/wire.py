"""Bus payloads (SPEC §3, §4): the pydantic models that validate commands and shape events.

They are the single source of the JSON Schemas and the AsyncAPI document in docs/.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from .domain.state import Mode
from .domain.statuses import CampaignStatus, Channel, Profile, Status

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_META_BYTES = 4 * 1024
ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def _check_meta(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if meta is not None and len(json.dumps(meta, separators=(",", ":")).encode()) > MAX_META_BYTES:
        raise ValueError(f"meta is larger than {MAX_META_BYTES} bytes")
    return meta


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class DialCommand(_Command):
    kind: Literal["dial"] = "dial"
    contact_id: Id
    phone: str = Field(max_length=64)
    mode: Mode = Mode.PROGRESSIVE
    policy: PolicyIn | None = None
    connect_to: str | None = Field(None, max_length=512)
    wrapup: bool = False
    bcw_s: float = Field(0.0, ge=0, le=3600)
    profile: Profile = Profile.MLUVII
    prompt: str | None = Field(None, max_length=256)


class Template(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)  # Meta adds template fields over time
    name: str = Field(min_length=1, max_length=512)
    language: str | dict[str, Any]
    components: list[dict[str, Any]] = []


class SendCommand(_Command):
    kind: Literal["send"] = "send"
    contact_id: Id
    phone: str = Field(max_length=64)
    template: Template
    policy: PolicyIn | None = None
    profile: Profile = Profile.MLUVII


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


class CampaignCommand(_Command):
    kind: Literal["campaign"] = "campaign"
    action: Literal["create", "start", "pause", "resume", "finish"]
    start_at: AwareDatetime | None = None
    budget: BudgetIn | None = None
    max_cps: float | None = Field(None, gt=0, le=10_000)
    max_concurrent: int | None = Field(None, ge=1, le=100_000)


class OperatorCommand(_Command):
    kind: Literal["operator"] = "operator"
    contact_id: Id
    signal: Literal["assigned", "accepted", "rejected", "call_now", "no_operator", "connected", "wrapup_done"]
    operator_id: str | None = Field(None, max_length=128)


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


class CommandResult(_Strict):
    schema_: Literal["telgate.command-result/1"] = Field("telgate.command-result/1", alias="schema")
    command_id: str | None
    kind: str | None = None
    campaign_id: str | None = None
    contact_id: str | None = None
    accepted: bool
    duplicate: bool = False
    error: CommandError | None = None
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
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejection("payload_too_large", None, f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejection("invalid_json", None, f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise Rejection("invalid_json", None, "payload must be a JSON object")
    command_id = raw.get("command_id") if isinstance(raw.get("command_id"), str) else None
    model = COMMANDS.get(kind)
    if model is None:
        raise Rejection("unknown_kind", "kind", f"unknown command kind {kind!r}; known: {sorted(COMMANDS)}", command_id)
    if "kind" in raw and raw["kind"] != kind:
        raise Rejection(
            "invalid_field", "kind", f"payload kind {raw['kind']!r} does not match topic kind {kind!r}", command_id
        )
    try:
        cmd: Command = model.model_validate(raw)  # type: ignore[assignment]
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise Rejection(_CODES.get(err["type"], "invalid_field"), field, err["msg"], command_id) from exc
    return cmd
