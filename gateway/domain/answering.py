"""Who answered and what they pressed (issue 24; the contract is docs/voice.md, "SPEC §6.3, §6.4").

The campaign's (or the dial's) rules as values; the voice table's rows decide with them, the channel
only listens and reports.

Rules:
- AMD runs on an answered call when the contact's `amd.enabled`; its verdict is Twilio's `AnsweredBy`
  (`human`, `machine_start`, `machine_end_beep`, `machine_end_silence`, `machine_end_other`, `fax`,
  `unknown`) with app_amd's cause and the decision time in ms from the answer.
- `unknown` (no audio, or the analysis ran out of time without a verdict) is taken as a person, as
  app_amd's NOTSURE is by the dial plans that use it: hanging up on a person is the worse error.
- What a machine means is the campaign's `on_machine`: `hangup` (the attempt ends like `unreachable`,
  retried by the policy), `leave_message` (the prompt starts after the beep or the silence that ends the
  greeting, then `success`), `continue` (treated as a person). A fax is always hung up on. In predictive
  mode a machine is never handed to an operator: `continue` is `hangup` there.
- The call is held silent while AMD listens (the status stays `calling`, the answer's event waits for the
  verdict and carries it) when `amd.wait`, when `on_machine` is `leave_message` (a message must not start
  over the greeting) and in predictive mode (an operator must not get a machine). Otherwise the answer
  moves the contact on at once and the prompt or transfer starts; the verdict arrives later and rides on
  the call's next event.
- Digits are gathered after the prompt when the contact has a `gather`; what was pressed maps through the
  `digits` map (a key is the whole input, e.g. "1" or "123") to `confirm` (success), `opt_out` (the
  number goes on the blacklist in the same transaction and is never dialled again; success), `transfer`
  (REFER to `connect_to`), `retry` (the attempt ends and is retried if attempts remain, whatever
  `retry_on` says); input that maps to nothing, or none before the timeout, ends the call as `success`
  with `outcome: no_input`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

HUMAN = "human"
UNKNOWN = "unknown"
FAX = "fax"
MACHINE_START = "machine_start"
MACHINE_ENDS = ("machine_end_beep", "machine_end_silence", "machine_end_other")


class MachineAction(StrEnum):
    HANGUP = "hangup"
    LEAVE_MESSAGE = "leave_message"
    CONTINUE = "continue"


class DigitAction(StrEnum):
    CONFIRM = "confirm"
    OPT_OUT = "opt_out"
    TRANSFER = "transfer"
    RETRY = "retry"


class AmdSettings(BaseModel):
    """`amd` on a campaign or a dial: app_amd's parameters with its defaults (app_amd.conf), and what a
    machine means. A dial's object replaces its campaign's as a whole."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    on_machine: MachineAction = MachineAction.HANGUP
    wait: bool = False  # hold the call silent until the verdict (forced by leave_message and predictive)
    message_prompt: Annotated[str, StringConstraints(max_length=255, pattern=r"^[^\x00-\x1f\x7f/\\]+$")] | None = (
        None  # leave_message plays this (default: the contact's prompt)
    )
    initial_silence_ms: int = Field(2500, ge=100, le=60_000)
    greeting_ms: int = Field(1500, ge=100, le=60_000)
    after_greeting_silence_ms: int = Field(800, ge=50, le=60_000)
    total_analysis_ms: int = Field(5000, ge=500, le=60_000)
    min_word_length_ms: int = Field(100, ge=10, le=10_000)
    between_words_silence_ms: int = Field(50, ge=10, le=10_000)
    maximum_number_of_words: int = Field(3, ge=1, le=100)
    maximum_word_length_ms: int = Field(5000, ge=100, le=60_000)
    silence_threshold: int = Field(256, ge=1, le=32_767)
    beep_wait_ms: int = Field(6000, ge=0, le=60_000)  # after a machine verdict: how long to wait for a beep

    def waits(self, predictive: bool) -> bool:
        """The call is held silent until the verdict (see the rules at the top)."""
        return self.wait or predictive or self.on_machine is MachineAction.LEAVE_MESSAGE

    def machine_action(self, answered_by: str, predictive: bool) -> MachineAction | None:
        """What this verdict means: None for a person (and `unknown`), else the action for a machine."""
        if answered_by == FAX:
            return MachineAction.HANGUP
        if answered_by in (HUMAN, UNKNOWN):
            return None
        if predictive and self.on_machine is MachineAction.CONTINUE:
            return MachineAction.HANGUP
        return self.on_machine


DigitKey = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[0-9*#A-D]+$")]


class GatherSettings(BaseModel):
    """`gather` on a campaign or a dial (Twilio's and jambonz's `gather`): digits after the prompt."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_digits: int = Field(1, ge=1, le=32)
    finish_on_key: Annotated[str, StringConstraints(pattern=r"^[*#]?$")] = "#"  # "" for none
    timeout_s: float = Field(5.0, gt=0, le=120)  # for the first digit, and between digits


DigitMap = dict[DigitKey, DigitAction]  # `digits` on a campaign or a dial: what was pressed → the outcome


def digit_action(digit_map: dict[str, DigitAction] | None, pressed: str | None) -> DigitAction | None:
    """What the input means: the map's entry for the whole input (None: no input, or none that maps)."""
    if not pressed or not digit_map:
        return None
    return digit_map.get(pressed)


__all__ = [
    "FAX",
    "HUMAN",
    "MACHINE_ENDS",
    "MACHINE_START",
    "UNKNOWN",
    "AmdSettings",
    "DigitAction",
    "DigitMap",
    "GatherSettings",
    "MachineAction",
    "digit_action",
]
