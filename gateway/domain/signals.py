"""Signals: everything that can happen to a contact, as frozen values.

Adapters (bus commands, SIP calls, WhatsApp webhooks, the scheduler, the dispatcher) translate the
outside world into a `Signal`; `decide()` is the only consumer. `evidence` is the raw proof that ends
up in the published event's `signal` object (SIP code, Q.850 cause, wamid, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gateway.domain.limits import Limits, NumberHistory
from gateway.domain.state import CallerId
from gateway.domain.windows import CallingWindow


class Kind(StrEnum):
    # lifecycle, from commands and the dispatcher
    CREATE = "create"
    DIAL_DUE = "dial_due"  # the dispatcher found room for this contact (voice dial or WhatsApp send)
    # voice call outcomes (SPEC §6.1)
    RINGING = "ringing"
    ANSWERED = "answered"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    FAILED = "failed"
    INVALID_NUMBER = "invalid_number"
    CLIENT_HANGUP = "client_hangup"
    HANGUP = "hangup"
    # an answered call, as the channel carried out what its decision asked (evidence-free / the outcome)
    PROMPT_DONE = "prompt_done"  # the prompt ended (played, or it could not be)
    TRANSFER_DONE = "transfer_done"  # the REFER's outcome: evidence `ok`, `sip_code`, `reason`
    AMD = "amd"  # the verdict: evidence `answered_by`, `amd_cause`, `amd_ms` (gateway/domain/answering.py)
    MACHINE_END = "machine_end"  # a machine's greeting ended (beep, silence): evidence `answered_by`
    DIGITS = "digits"  # a gather ended: evidence `digits` (maybe empty), `finish` (max_digits, key, timeout)
    # operator signals (SPEC §4 operator)
    ASSIGNED = "assigned"
    ACCEPTED = "accepted"
    OPERATOR_REJECTED = "operator_rejected"
    CALL_NOW = "call_now"
    NO_OPERATOR = "no_operator"
    CONNECTED = "connected"
    WRAPUP_DONE = "wrapup_done"
    # timers
    BCW_ELAPSED = "bcw_elapsed"
    ACW_ELAPSED = "acw_elapsed"
    AMBIGUOUS_ELAPSED = "ambiguous_elapsed"
    ABANDON_ELAPSED = "abandon_elapsed"  # a person waited `abandon_after_s` for an operator
    # admin
    CANCEL = "cancel"
    REMOVE = "remove"
    FINISH = "finish"
    GATEWAY_RESTART = "gateway_restart"
    # WhatsApp (SPEC §6.2), already classified by the adapter
    WA_ACCEPTED = "wa_accepted"
    WA_SENT = "wa_sent"
    WA_DELIVERED = "wa_delivered"
    WA_READ = "wa_read"
    WA_DELIVERY_FAILED = "wa_delivery_failed"
    WA_SENDING_FAILED = "wa_sending_failed"
    WA_RETRYABLE = "wa_retryable"
    WA_PAIR_LIMIT = "wa_pair_limit"
    WA_INVALID = "wa_invalid"
    WA_ACCOUNT = "wa_account"
    WA_REJECTED = "wa_rejected"  # the API refused this message with a code in no row of §6.2
    WA_AMBIGUOUS = "wa_ambiguous"
    WA_REPLY = "wa_reply"  # the customer answered (evidence `reply`: its type, text or payload, outcome)


# Derived triggers: what decide() looks up in the tables after reading the state.
class Trigger(StrEnum):
    BLACKLIST_HIT = "blacklist_hit"
    PLAN_LIMIT = "plan_limit"
    SETTLE = "settle"  # let what is in flight end on its own, without a retry
    STALE = "stale_outcome"  # a call outcome of an attempt that is not the one in flight
    RECORD_ONLY = "record_only"  # webhook of a message whose contact was canceled/removed
    # who answered (gateway/domain/answering.py): the verdict read with the contact's rules
    ANSWERED_LISTEN = "answered_listen"  # answered, held silent while AMD listens
    AMD_HUMAN = "amd_human"  # a person (or `unknown`), or a machine the campaign treats as one
    AMD_MACHINE = "amd_machine"  # a machine (or a fax) to hang up on
    AMD_MACHINE_WAIT = "amd_machine_wait"  # a machine that gets a message: wait for its greeting's end
    AMD_MESSAGE = "amd_message"  # the greeting ended: leave the message
    # lawful calling (docs/lawful-calling.md): a due dial that may not be placed now waits
    OUTSIDE_WINDOW = "outside_window"  # the callee's local time is outside the campaign's window
    NUMBER_CAPPED = "number_capped"  # the number's attempt caps (over every campaign) hold it back


@dataclass(frozen=True, slots=True)
class Signal:
    kind: Kind
    evidence: dict[str, Any] = field(default_factory=dict)
    # facts the shells resolve before deciding (the core reads no store)
    phone: str | None = None  # CREATE: E.164 number, None when invalid/blank
    blacklisted: bool = False  # DIAL_DUE
    # DIAL_DUE: the campaign's contacts budget as counted (its first dials so far, this turn's among them)
    contacts_dialed: int = 0
    max_contacts: int | None = None
    caller: CallerId | None = None  # DIAL_DUE: the campaign's caller ID, under the dial's own
    # DIAL_DUE (voice): the campaign's calling window and caps, and the number's history over every campaign
    window: CallingWindow | None = None
    limits: Limits | None = None
    history: NumberHistory | None = None
    attempt: int | None = None  # outcome of which attempt (stale outcomes are ignored)
    duration_s: float | None = None  # HANGUP
    wamid: str | None = None  # WA_ACCEPTED
    operator_id: str | None = None
