"""Status vocabularies of SPEC §5 with their mluvii and Tovie labels.

Rules stated once:
- a contact status is a canonical snake_case name; its label depends on the campaign's profile;
- each channel has its own set of legal statuses and its own final ones;
- Tovie DialogStudio has no WhatsApp campaigns, so WhatsApp labels are mluvii's in both profiles.
"""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    VOICE = "voice"
    WHATSAPP = "whatsapp"


class Profile(StrEnum):
    MLUVII = "mluvii"
    TOVIE = "tovie"


class Status(StrEnum):
    INITIAL = "initial"
    OPERATOR_ASSIGNED = "operator_assigned"
    BCW = "bcw"
    AWAITING_OPERATOR = "awaiting_operator"
    CALLING = "calling"
    CALL_IN_PROGRESS = "call_in_progress"
    ACW = "acw"
    RETRY_SCHEDULED = "retry_scheduled"
    SUCCESS = "success"
    CANCELED_BY_CLIENT = "canceled_by_client"
    ABANDONED = "abandoned"
    COMPLETED_WITHOUT_ANSWER = "completed_without_answer"
    DIAL_FAILED = "dial_failed"
    INVALID_RECORD = "invalid_record"
    BLACKLISTED = "blacklisted"
    REJECTED_BY_OPERATOR = "rejected_by_operator"
    CANCELED_BY_ADMIN = "canceled_by_admin"
    REMOVED = "removed"
    PLAN_LIMIT_EXCEEDED = "plan_limit_exceeded"
    # WhatsApp
    IN_PROGRESS = "in_progress"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    REPLIED = "replied"
    DELIVERY_FAILED = "delivery_failed"
    SENDING_FAILED = "sending_failed"
    ERROR = "error"


class CampaignStatus(StrEnum):
    DRAFT = "draft"
    PLANNED = "planned"
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    FINISHED = "finished"


S = Status

# status -> (mluvii label, tovie label, final)
VOICE_STATUSES: dict[Status, tuple[str, str, bool]] = {
    S.INITIAL: ("Initial", "Planned", False),
    S.OPERATOR_ASSIGNED: ("Operator assigned", "Planned", False),
    S.BCW: ("BCW", "Planned", False),
    S.AWAITING_OPERATOR: ("Awaiting for free operator", "In progress", False),
    S.CALLING: ("Calling", "In progress", False),
    S.CALL_IN_PROGRESS: ("Call in progress", "In progress", False),
    S.ACW: ("ACW", "Answered", False),
    S.RETRY_SCHEDULED: ("Retry scheduled", "Another call attempt scheduled", False),
    S.SUCCESS: ("Success", "Answered", True),
    S.CANCELED_BY_CLIENT: ("Canceled by client", "Answered", True),
    # predictive: a person answered, no operator within `abandon_after_s`; the gateway played
    # `abandon_prompt` and hung up (SPEC §5.1, docs/lawful-calling.md)
    S.ABANDONED: ("Abandoned", "Answered", True),
    S.COMPLETED_WITHOUT_ANSWER: ("Not reached", "Completed without answer", True),
    S.DIAL_FAILED: ("Dial failed", "Finished with a technical error", True),
    S.INVALID_RECORD: ("Invalid record", "Finished with a technical error", True),
    S.BLACKLISTED: ("Blacklisted", "Not dialed", True),
    S.REJECTED_BY_OPERATOR: ("Rejected by operator", "Not dialed", True),
    S.CANCELED_BY_ADMIN: ("Canceled by admin", "Not dialed", True),
    S.REMOVED: ("Removed", "Not dialed", True),
    S.PLAN_LIMIT_EXCEEDED: ("Plan limit exceeded", "Plan limit exceeded", True),
}

WHATSAPP_STATUSES: dict[Status, tuple[str, str, bool]] = {
    S.INITIAL: ("Initial", "Initial", False),
    S.IN_PROGRESS: ("In progress", "In progress", False),
    S.RETRY_SCHEDULED: ("Retry scheduled", "Retry scheduled", False),
    S.SENT: ("Sent", "Sent", False),
    S.DELIVERED: ("Delivered", "Delivered", False),
    S.READ: ("Read", "Read", True),
    S.REPLIED: ("Replied", "Replied", True),  # a reply implies delivered and read
    S.DELIVERY_FAILED: ("Delivery failed", "Delivery failed", True),
    S.SENDING_FAILED: ("Sending failed", "Sending failed", True),
    S.ERROR: ("Error", "Error", True),
    S.INVALID_RECORD: ("Invalid record", "Invalid record", True),
    S.BLACKLISTED: ("Blacklisted", "Blacklisted", True),
    S.CANCELED_BY_ADMIN: ("Canceled by admin", "Canceled by admin", True),
    S.REMOVED: ("Removed", "Removed", True),
}

STATUSES: dict[Channel, dict[Status, tuple[str, str, bool]]] = {
    Channel.VOICE: VOICE_STATUSES,
    Channel.WHATSAPP: WHATSAPP_STATUSES,
}


def label(channel: Channel, status: Status, profile: Profile) -> str:
    mluvii, tovie, _ = STATUSES[channel][status]
    return tovie if profile is Profile.TOVIE else mluvii


def is_final(channel: Channel, status: Status) -> bool:
    return STATUSES[channel][status][2]


# WhatsApp progress order: statuses only move up this ladder (SPEC §5.2).
WA_RANK: dict[Status, int] = {S.IN_PROGRESS: 0, S.SENT: 1, S.DELIVERED: 2, S.READ: 3, S.REPLIED: 4}
