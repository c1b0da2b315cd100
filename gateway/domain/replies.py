"""What a customer's reply means to the campaign that messaged them (SPEC §5.2 `replied`): pure.

Rules stated once:
- a reply is a message whose `context.id` (or, for a reaction, the message it reacts to) is one of the
  campaign's messages; with `match = "sender"`, any message from the contact's number while its
  campaign runs;
- its outcome is the first of `opt_out`, `decline`, `confirm` whose rule it meets, else `other`: a
  quick-reply button by its payload or its text, a text by a keyword per language — the whole text, or
  its first words — compared case- and accent-insensitively ("Ano, přijdu" meets the keyword "ano");
- a campaign that names no `opt_out` rule keeps the default one: the opt-out words carriers honour
  (CTIA: STOP, STOPALL, UNSUBSCRIBE, END, QUIT; CANCEL is left out — to an appointment reminder it
  means "decline");
- `opt_out` puts the number on the blacklist: no campaign on either channel contacts it again.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Outcome(StrEnum):
    CONFIRM = "confirm"
    DECLINE = "decline"
    OPT_OUT = "opt_out"
    OTHER = "other"


class Match(StrEnum):
    CONTEXT = "context"  # only a message that answers one of the campaign's (its context is our wamid)
    SENDER = "sender"  # any message from the contact's number while the campaign runs


class OutcomeRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    buttons: tuple[str, ...] = ()  # quick-reply payloads or button texts
    keywords: dict[str, tuple[str, ...]] = {}  # language -> words or phrases


DEFAULT_OPT_OUT = OutcomeRule(keywords={"*": ("stop", "stopall", "unsubscribe", "end", "quit")})


class ReplyRules(BaseModel):
    """A campaign's `replies` setting (the `campaign` command's field, kept on the campaign)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: Match = Match.CONTEXT
    confirm: OutcomeRule | None = None
    decline: OutcomeRule | None = None
    opt_out: OutcomeRule | None = None


DEFAULT_RULES = ReplyRules()


@dataclass(frozen=True, slots=True)
class Reply:
    """What the customer sent, as far as an outcome needs it."""

    type: str  # Meta's message type: text, button, interactive, image, reaction, ...
    text: str | None = None  # the text, the button's or list row's title, a caption, a reaction's emoji
    payload: str | None = None  # a quick-reply button's payload, an interactive reply's id

    def evidence(self, outcome: Outcome) -> dict[str, str]:
        out = {"type": self.type, "outcome": str(outcome)}
        if self.text is not None:
            out["text"] = self.text[:1024]
        if self.payload is not None:
            out["payload"] = self.payload[:1024]
        return out


_NOT_WORD = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Case- and accent-insensitive words: "  Ano,  PŘIJDU! " → "ano prijdu"."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NOT_WORD.sub(" ", bare.casefold()).strip()


def _meets(rule: OutcomeRule, reply: Reply, words: str) -> bool:
    buttons = {normalise(b) for b in rule.buttons}
    if buttons and (
        (reply.payload is not None and normalise(reply.payload) in buttons)
        or (reply.type in ("button", "interactive") and words in buttons)
    ):
        return True
    if not words:
        return False
    for phrases in rule.keywords.values():
        for phrase in phrases:
            key = normalise(phrase)
            if key and (words == key or words.startswith(key + " ")):
                return True
    return False


def classify(reply: Reply, rules: ReplyRules | None) -> Outcome:
    rules = rules or DEFAULT_RULES
    words = normalise(reply.text or "")
    for outcome, rule in (
        (Outcome.OPT_OUT, rules.opt_out or DEFAULT_OPT_OUT),
        (Outcome.DECLINE, rules.decline),
        (Outcome.CONFIRM, rules.confirm),
    ):
        if rule is not None and _meets(rule, reply, words):
            return outcome
    return Outcome.OTHER
