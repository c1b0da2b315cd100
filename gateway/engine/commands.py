"""Commands (SPEC §4) → signals and campaign actions, inside the engine's transaction.

Every command is answered with a CommandResult, stored under its `command_id`: the same id again is
answered again with the stored result (flagged `duplicate`) and changes nothing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.contract.wire import (
    BlacklistCommand,
    CampaignCommand,
    CancelCommand,
    Command,
    CommandError,
    CommandResult,
    DialCommand,
    DialEntry,
    OperatorCommand,
    PolicyIn,
    RefusedContact,
    RemoveCommand,
    SendCommand,
    SendEntry,
)
from gateway.domain.campaign import Action
from gateway.domain.effects import TimerKind
from gateway.domain.phones import normalise
from gateway.domain.policy import Policy
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import Budget, CallerId, ContactState, Mode
from gateway.domain.statuses import CampaignStatus, Channel
from gateway.engine.engine import Hint, Unit
from gateway.store import Timer
from sip.rtp import PromptError, load_wav

log = logging.getLogger("telgate.commands")
INTERNAL_ERROR = "internal_error"

PREDICTIVE_MIN_RING_S = 15.0
OPERATOR_SIGNALS = {
    "assigned": Kind.ASSIGNED,
    "accepted": Kind.ACCEPTED,
    "rejected": Kind.OPERATOR_REJECTED,
    "call_now": Kind.CALL_NOW,
    "no_operator": Kind.NO_OPERATOR,
    "connected": Kind.CONNECTED,
    "wrapup_done": Kind.WRAPUP_DONE,
}


@dataclass(frozen=True)
class CommandContext:
    default_region: str
    default_policy: Policy
    enabled: frozenset[Channel]
    ring_timeout_s: float
    ambiguous_timeout_s: float = 600.0
    prompts_dir: Path | None = None
    connect_to: str | None = None  # `sip.connect_to`: where a dial that names none is transferred on answer

    @functools.cached_property
    def voice_policy(self) -> Policy:
        """The default policy of a dial: with the SIP ring timeout when it has none — the one place the
        `sip.ring_timeout_s` default is applied (the voice channel dials with the contact's policy). Made once
        (a frozen model, shared): a copy per single dial showed in the store thread's profile."""
        policy = self.default_policy
        if policy.ring_timeout_s is not None:
            return policy
        return policy.model_copy(update={"ring_timeout_s": self.ring_timeout_s})


def prompt_path(prompts_dir: Path | None, name: str) -> Path | None:
    """The file a prompt name stands for: a plain file name inside `prompts_dir`, nothing else."""
    if prompts_dir is None or not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    return prompts_dir / name


@functools.lru_cache(maxsize=256)
def _prompt_checked(path: Path, mtime_ns: int) -> str | None:
    try:
        load_wav(path)
    except PromptError as exc:
        return str(exc)
    return None


def prompt_problem(prompts_dir: Path | None, name: str) -> str | None:
    """Why a `dial.prompt` cannot be played, or None when it can."""
    path = prompt_path(prompts_dir, name)
    if path is None:
        return f"prompt {name!r} must be a file name in sip.prompts_dir"
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return f"no prompt {name!r} in {prompts_dir}"
    return _prompt_checked(path, mtime)


class _No(Exception):
    def __init__(self, code: str, field: str | None, message: str) -> None:
        super().__init__(message)
        self.error = CommandError(code=code, field=field, message=message)


def merge_policy(default: Policy, given: PolicyIn | None) -> Policy:
    if given is None:
        return default
    updates = {k: (tuple(v) if isinstance(v, list) else v) for k, v in given.model_dump(exclude_none=True).items()}
    return default.model_copy(update=updates)


def execute(
    unit: Unit,
    cmd: Command,
    ctx: CommandContext,
    gateway_id: str,
    response_topic: str | None,
    correlation: bytes | None,
    numbers: Mapping[str, str | None] | None = None,
) -> CommandResult:
    """Apply one validated command; publish and store its result. Runs inside the transaction.
    `numbers`: the E.164 form (or None) of each phone the command gives, when normalised beforehand
    (`phones.normalise_all`); a phone missing from it is normalised here."""
    stored = unit.read.get_command(cmd.command_id)
    if stored is not None:
        result = CommandResult.model_validate_json(stored).model_copy(
            update={"duplicate": True, "occurred_at": unit.now}
        )
        unit.command_result(cmd.command_id, _payload(result), response_topic, correlation, store=False)
        return result
    contact_id = getattr(cmd, "contact_id", None)
    error: CommandError | None = None
    intake: Intake | None = None
    try:
        intake = _apply(unit, cmd, ctx, numbers)
    except _No as no:
        error = no.error
    counts: dict[str, Any] = {}
    if intake is not None and getattr(cmd, "contacts", None) is not None:
        counts = {
            "contacts_accepted": intake.accepted,
            "contacts_invalid": intake.invalid,
            "contacts_refused": intake.refused,
        }
    result = CommandResult(
        command_id=cmd.command_id,
        kind=cmd.kind,
        campaign_id=cmd.campaign_id,
        contact_id=contact_id,
        accepted=error is None,
        error=error,
        gateway_id=gateway_id,
        occurred_at=unit.now,
        **counts,
    )
    unit.command_result(cmd.command_id, _payload(result), response_topic, correlation, store=True)
    return result


def command_hint(cmd: Command) -> Hint:
    """What applying `cmd` reads first: its command id, and the contacts it names."""
    campaign_id, contact_id = getattr(cmd, "campaign_id", None), getattr(cmd, "contact_id", None)
    keys: tuple[tuple[str, str], ...] = ()
    if isinstance(cmd, DialCommand | SendCommand) and cmd.contacts is not None:
        keys = tuple((cmd.campaign_id, e.contact_id) for e in cmd.contacts)
    elif isinstance(campaign_id, str) and isinstance(contact_id, str):  # a single dial or send among them
        keys = ((campaign_id, contact_id),)
    return Hint(contacts=keys, commands=(cmd.command_id,))


def internal_error(
    command_id: str | None, kind: str | None, gateway_id: str, now: datetime, cmd: Command | None = None
) -> CommandResult:
    """The answer to a command whose handling failed inside the gateway (a bug, not the command's fault):
    it is still answered once, acknowledged and counted, and the commands after it go on (SPEC §3)."""
    return CommandResult(
        command_id=command_id,
        kind=kind,
        campaign_id=getattr(cmd, "campaign_id", None),
        contact_id=getattr(cmd, "contact_id", None),
        accepted=False,
        error=CommandError(
            code=INTERNAL_ERROR,
            field=None,
            message="the gateway failed while handling this command; the failure is logged and counted",
        ),
        gateway_id=gateway_id,
        occurred_at=now,
    )


def fail_command(
    unit: Unit,
    exc: BaseException,
    cmd: Command,
    gateway_id: str,
    response_topic: str | None,
    correlation: bytes | None,
) -> CommandResult:
    """`execute`'s fallback (Engine.submit): committed instead when applying `cmd` raised, on a transaction
    without its writes. Kept under its id, so a redelivery is answered the same and is not tried again."""
    log.error(
        "command failed inside the gateway",
        exc_info=exc,
        extra={"kind": cmd.kind, "command_id": cmd.command_id, "campaign_id": getattr(cmd, "campaign_id", None)},
    )
    result = internal_error(cmd.command_id, cmd.kind, gateway_id, unit.now, cmd)
    unit.command_result(cmd.command_id, _payload(result), response_topic, correlation, store=True)
    return result


def publish_result(unit: Unit, result: CommandResult, response_topic: str | None, correlation: bytes | None) -> None:
    """A rejection of a command that never reached `execute` (malformed): published, not kept."""
    unit.command_result(result.command_id or "", _payload(result), response_topic, correlation, store=False)


def _payload(result: CommandResult) -> bytes:
    return result.model_dump_json(by_alias=True).encode()


def _refused(code: str | None, what: str) -> None:
    if code is not None:
        raise _No(
            code,
            "contact_id" if code in ("unknown_contact", "contact_busy", "contact_final", "contact_in_flight") else None,
            f"{what}: {code}",
        )


def _apply(
    unit: Unit, cmd: Command, ctx: CommandContext, numbers: Mapping[str, str | None] | None = None
) -> Intake | None:
    match cmd:
        case DialCommand() | SendCommand():
            return _create(unit, cmd, ctx, numbers)
        case CancelCommand(campaign_id=campaign_id, contact_id=contact_id):
            if contact_id is not None:
                d = unit.apply((campaign_id, contact_id), Signal(Kind.CANCEL, {"source": "admin", "kind": "cancel"}))
                if d.illegal:
                    raise _No("illegal_transition", "contact_id", f"cannot cancel: {d.illegal}")
                _refused(d.refused, "cancel")
            else:
                for key in unit.read.unfinished_contacts(campaign_id):
                    unit.apply(key, Signal(Kind.CANCEL, {"source": "admin", "kind": "cancel"}))
        case RemoveCommand(campaign_id=campaign_id, contact_id=contact_id):
            d = unit.apply((campaign_id, contact_id), Signal(Kind.REMOVE, {"source": "admin", "kind": "remove"}))
            if d.illegal:
                raise _No("illegal_transition", "contact_id", f"cannot remove: {d.illegal}")
            _refused(d.refused, "remove")
        case BlacklistCommand(phone=phone, action=action):
            number = normalise(phone, ctx.default_region)
            if number is None:
                raise _No("invalid_phone", "phone", "not a valid phone number")
            unit.blacklist(number, action == "add")
        case CampaignCommand():
            _campaign(unit, cmd)
        case OperatorCommand(campaign_id=campaign_id, signal=("available" | "unavailable") as sig, operator_id=op):
            assert op is not None  # checked with the command's shape
            unit.operator_presence(campaign_id, op, sig == "available")
        case OperatorCommand(campaign_id=campaign_id, contact_id=contact_id, signal=sig, operator_id=op):
            assert contact_id is not None  # checked with the command's shape
            d = unit.apply(
                (campaign_id, contact_id),
                Signal(OPERATOR_SIGNALS[sig], {"source": "operator", "kind": sig, "operator_id": op}, operator_id=op),
            )
            _refused(d.refused, "operator")
            if d.illegal:
                raise _No("illegal_transition", "signal", f"operator signal not allowed now: {d.illegal}")
    return None


@dataclass
class Intake:
    """What a `dial`/`send` did, contact by contact (a single-contact command is a bulk of one)."""

    accepted: int = 0
    invalid: int = 0
    refused: list[RefusedContact] = field(default_factory=list)


def _create(
    unit: Unit, cmd: DialCommand | SendCommand, ctx: CommandContext, numbers: Mapping[str, str | None] | None = None
) -> Intake:
    """Create the command's contacts in this transaction; what is wrong with one contact refuses that one."""
    channel = Channel.VOICE if isinstance(cmd, DialCommand) else Channel.WHATSAPP
    if channel not in ctx.enabled:
        raise _No("channel_disabled", "kind", f"the {channel} channel is not configured on this gateway")
    camp = unit.campaign(cmd.campaign_id)
    if camp.status is CampaignStatus.FINISHED:
        raise _No("campaign_finished", "campaign_id", "the campaign is finished")
    # a dial's own policy over the voice default, which already has the ring timeout (a dial that gives
    # none shares that one model)
    policy = merge_policy(ctx.voice_policy if channel is Channel.VOICE else ctx.default_policy, cmd.policy)
    shared: dict[str, Any] = {"channel": channel, "policy": policy, "profile": cmd.profile}
    if isinstance(cmd, DialCommand):
        shared |= {"mode": cmd.mode, "wrapup": cmd.wrapup, "bcw_s": cmd.bcw_s}
        # who answered and what they pressed: the dial's own rules, else its campaign's (as they are now)
        shared |= {
            "amd": cmd.amd if cmd.amd is not None else camp.amd,
            "gather": cmd.gather if cmd.gather is not None else camp.gather,
            "digit_map": cmd.digits if cmd.digits is not None else camp.digit_map,
        }
        if cmd.mode is Mode.PREDICTIVE:  # a person waits at most abandon_after_s for an operator
            shared |= {"abandon_after_s": camp.abandon_after_s, "abandon_prompt": camp.abandon_prompt}
            if policy.ring_timeout_s is not None and policy.ring_timeout_s < PREDICTIVE_MIN_RING_S:
                # TSR 310.4(b)(4)(i): at least 15 s (four rings) before an unanswered call is given up
                shared["policy"] = policy = policy.model_copy(update={"ring_timeout_s": PREDICTIVE_MIN_RING_S})
        amd = shared["amd"]
        if amd is not None and amd.message_prompt is not None:
            problem = prompt_problem(ctx.prompts_dir, amd.message_prompt)
            if problem is not None:
                raise _No("invalid_prompt", "amd.message_prompt", problem)
    else:
        shared["template"] = cmd.template.model_dump(exclude={"category"})  # what goes to the Cloud API
        shared["template_category"] = cmd.template.category
    bulk = cmd.contacts is not None
    intake = Intake()
    entries: Sequence[DialEntry | SendEntry] = cmd.entries()
    for index, entry in enumerate(entries):
        where = f"contacts[{index}]." if bulk else ""
        try:
            invalid = _create_one(unit, cmd, entry, shared, ctx, where, numbers)
        except _No as no:
            if not bulk:
                raise
            intake.refused.append(
                RefusedContact(
                    contact_id=entry.contact_id, code=no.error.code, field=no.error.field, message=no.error.message
                )
            )
            continue
        intake.accepted += 1
        intake.invalid += invalid
    return intake


_NO_CALLER = (None, None, None)


def _create_one(
    unit: Unit,
    cmd: DialCommand | SendCommand,
    entry: DialEntry | SendEntry,
    shared: dict[str, Any],
    ctx: CommandContext,
    where: str,
    numbers: Mapping[str, str | None] | None = None,
) -> bool:
    """One contact: `initial` (or `invalid_record` for a bad number); True when its number is invalid."""
    fields = dict(shared)
    if isinstance(entry, DialEntry):
        assert isinstance(cmd, DialCommand)
        prompt = entry.prompt if entry.prompt is not None else cmd.prompt
        if prompt is not None:
            problem = prompt_problem(ctx.prompts_dir, prompt)
            if problem is not None:
                raise _No("invalid_prompt", f"{where}prompt", problem)
        given = (entry.caller_id, entry.caller_name, entry.caller_id_withheld)
        base = (cmd.caller_id, cmd.caller_name, cmd.caller_id_withheld)
        caller: CallerId | None = None
        if given != _NO_CALLER or base != _NO_CALLER:  # most dials name none: no models built for it
            merged = CallerId(number=given[0], name=given[1], withheld=given[2]).over(
                CallerId(number=base[0], name=base[1], withheld=base[2])
            )
            caller = None if merged.empty else merged
        # the one place the `sip.connect_to` default is applied: the contact keeps where it goes on answer
        fields |= {
            "connect_to": entry.connect_to or cmd.connect_to or ctx.connect_to,
            "prompt": prompt,
            "caller": caller,
        }
    key = (cmd.campaign_id, entry.contact_id)
    phone = (
        numbers[entry.phone]
        if numbers is not None and entry.phone in numbers
        else normalise(entry.phone, ctx.default_region)
    )
    meta = entry.meta if entry.meta is not None else cmd.meta
    state = ContactState(campaign_id=key[0], contact_id=key[1], phone_raw=entry.phone, meta=meta, **fields)
    d = unit.apply(key, Signal(Kind.CREATE, phone=phone), create=state)
    if d.refused:
        existing = unit.read.get_contact(key)
        if existing is not None and existing.channel is not state.channel:
            raise _No("contact_busy", f"{where}contact_id", f"contact exists on the {existing.channel} channel")
        raise _No(d.refused, f"{where}contact_id", f"{cmd.kind}: {d.refused}")
    return phone is None


def _campaign(unit: Unit, cmd: CampaignCommand) -> None:
    settings: dict[str, Any] = {
        "start_at": cmd.start_at,
        "max_cps": cmd.max_cps,
        "max_concurrent": cmd.max_concurrent,
        "replies": cmd.replies,
        "window": cmd.window,
        "limits": cmd.limits,
        "abandon_after_s": cmd.abandon_after_s,
        "abandon_prompt": cmd.abandon_prompt,
        "max_abandon_rate": cmd.max_abandon_rate,
        "abandon_min_answers": cmd.abandon_min_answers,
        "abandon_window": cmd.abandon_window,
        "operators": cmd.operators,
        "amd": cmd.amd,
        "gather": cmd.gather,
        "digit_map": cmd.digits,
    }
    if cmd.budget is not None:
        settings["budget"] = Budget(**cmd.budget.model_dump())
    existing = unit.read.get_campaign(cmd.campaign_id)
    caller = CallerId(number=cmd.caller_id, name=cmd.caller_name, withheld=cmd.caller_id_withheld)
    if not caller.empty:  # what this command leaves out of the caller ID stays as the campaign had it
        settings["caller"] = caller.over(existing.caller if existing is not None else None)
    if cmd.action == "create":
        created = unit.create_campaign(cmd.campaign_id, **settings)
        if created.refused:
            raise _No(created.refused, "campaign_id", "the campaign exists")
        return
    # the domain decides the campaign and its effects (the start_at timer, finishing its contacts)
    decision = unit.campaign_action(cmd.campaign_id, Action(cmd.action), **settings)
    if decision.refused:
        raise _No(decision.refused, "action", f"campaign {cmd.action} refused: {decision.refused}")


def apply_timer(unit: Unit, timer: Timer) -> None:
    """A persisted timer fired: delete it and apply its signal in one transaction (fires once)."""
    if not unit.fire_timer(timer.id):
        return
    kind, campaign_id, contact_id = timer.kind, timer.campaign_id, timer.contact_id
    if kind is TimerKind.CAMPAIGN_START:
        unit.campaign_action(campaign_id, Action.START_DUE)
        return
    assert contact_id is not None
    signal_kind = {
        TimerKind.BCW: Kind.BCW_ELAPSED,
        TimerKind.ACW: Kind.ACW_ELAPSED,
        TimerKind.AMBIGUOUS: Kind.AMBIGUOUS_ELAPSED,
        TimerKind.ABANDON: Kind.ABANDON_ELAPSED,
    }[kind]
    unit.apply((campaign_id, contact_id), Signal(signal_kind, {"source": "scheduler", "kind": str(kind)}))
