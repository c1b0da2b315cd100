"""A customer's reply, decided in the domain (issue 22): its outcome, and `replied` in the table."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.domain.decide import decide
from gateway.domain.replies import Outcome, OutcomeRule, Reply, ReplyRules, classify, normalise
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState
from gateway.domain.statuses import WA_RANK, Channel, Status, is_final, label
from gateway.domain.statuses import Profile as P

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
RULES = ReplyRules(
    confirm=OutcomeRule(buttons=("CONFIRM",), keywords={"en": ("yes", "i will come"), "cs": ("ano", "přijdu")}),
    decline=OutcomeRule(buttons=("DECLINE",), keywords={"en": ("no", "cancel"), "cs": ("ne", "zrušit")}),
)


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (Reply("button", "Confirm", "CONFIRM"), Outcome.CONFIRM),
        (Reply("button", "Potvrdit", "confirm"), Outcome.CONFIRM),  # a payload case-insensitively
        (Reply("interactive", "Decline", "DECLINE"), Outcome.DECLINE),
        (Reply("text", "Yes, I'll come"), Outcome.CONFIRM),
        (Reply("text", "  ANO, přijdu!"), Outcome.CONFIRM),
        (Reply("text", "prijdu"), Outcome.CONFIRM),  # accents are not needed
        (Reply("text", "Zrušit prosím"), Outcome.DECLINE),
        (Reply("text", "STOP"), Outcome.OPT_OUT),  # the default opt-out words stay
        (Reply("text", "stop sending me this"), Outcome.OPT_OUT),
        (Reply("text", "Unsubscribe"), Outcome.OPT_OUT),
        (Reply("text", "yesterday I could not"), Outcome.OTHER),  # a keyword is a whole word
        (Reply("text", "Nobody home"), Outcome.OTHER),
        (Reply("image", None), Outcome.OTHER),
        (Reply("reaction", "👍"), Outcome.OTHER),
    ],
)
def test_a_reply_is_classified_by_the_campaigns_rules(reply: Reply, outcome: Outcome) -> None:
    assert classify(reply, RULES) is outcome


def test_without_rules_only_the_opt_out_words_mean_something() -> None:
    assert classify(Reply("text", "Yes"), None) is Outcome.OTHER
    assert classify(Reply("text", "QUIT"), None) is Outcome.OPT_OUT
    # a campaign's own opt-out rule replaces the default words
    own = ReplyRules(opt_out=OutcomeRule(keywords={"cs": ("odhlásit",)}))
    assert classify(Reply("text", "Odhlasit"), own) is Outcome.OPT_OUT
    assert classify(Reply("text", "stop"), own) is Outcome.OTHER


def test_normalise() -> None:
    assert normalise("  Ano,  PŘIJDU! ") == "ano prijdu"
    assert normalise("Straße") == "strasse"


def _contact(status: Status) -> ContactState:
    return ContactState(
        campaign_id="c", contact_id="k", channel=Channel.WHATSAPP, status=status, sequence=3, attempt=1,
        phone="+420601234567", in_flight=status is Status.IN_PROGRESS,
    )  # fmt: skip


def _reply(outcome: Outcome = Outcome.CONFIRM) -> Signal:
    evidence = {"source": "whatsapp", "kind": "reply", "reply": Reply("text", "yes").evidence(outcome)}
    return Signal(Kind.WA_REPLY, evidence)


@pytest.mark.parametrize(
    "status",
    [Status.IN_PROGRESS, Status.SENT, Status.DELIVERED, Status.READ, Status.DELIVERY_FAILED, Status.RETRY_SCHEDULED],
)
def test_a_reply_moves_the_contact_to_replied(status: Status) -> None:
    d = decide(_contact(status), _reply(), NOW)
    assert d.state.status is Status.REPLIED and not d.state.in_flight
    (event,) = d.events
    assert event.final and event.previous_status is status
    assert event.evidence["reply"] == {"type": "text", "text": "yes", "outcome": "confirm"}
    assert not any(type(e).__name__ in ("Send", "Dial") for e in d.effects)  # nothing reaches the outside


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (Status.REPLIED, "duplicate"),  # the first reply decides
        (Status.INITIAL, "not_sent"),
        (Status.ERROR, "not_sent"),
        (Status.SENDING_FAILED, "not_sent"),
        (Status.BLACKLISTED, "not_sent"),
        (Status.CANCELED_BY_ADMIN, "recorded"),
        (Status.REMOVED, "recorded"),
    ],
)
def test_a_reply_elsewhere_is_absorbed_not_illegal(status: Status, why: str) -> None:
    d = decide(_contact(status), _reply(), NOW)
    assert d.absorbed == why and not d.events and d.illegal is None


def test_replied_is_the_top_of_the_ladder() -> None:
    assert WA_RANK[Status.REPLIED] > WA_RANK[Status.READ]
    assert is_final(Channel.WHATSAPP, Status.REPLIED)
    assert label(Channel.WHATSAPP, Status.REPLIED, P.MLUVII) == "Replied"
    for late in (Kind.WA_SENT, Kind.WA_DELIVERED, Kind.WA_READ, Kind.WA_DELIVERY_FAILED):
        assert decide(_contact(Status.REPLIED), Signal(late), NOW).absorbed == "duplicate"
