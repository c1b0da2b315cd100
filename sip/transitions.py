"""Transition tables as data (DESIGN habit 3), shared by the call's phase table (`sip.call`) and the client
transactions' tables (`sip.transaction`).

A table is written as rows `(states, event, target, actions)`: in each of `states`, `event` moves to `target`
(`STAY`: the state does not change) and runs `actions` in order. `table(rows)` turns them into one dict
keyed by (state, event) and refuses, at import, two rows for the same pair. What has no row is illegal: the
caller raises `IllegalTransition`, which names the state and the event.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)
A = TypeVar("A", bound=StrEnum)

STAY = None  # a row's target: the state does not change


def table(
    rows: Iterable[tuple[tuple[S, ...], E, S | None, tuple[A, ...]]],
) -> dict[tuple[S, E], tuple[S, tuple[A, ...]]]:
    """The rows as one dict (state, event) -> (next state, actions); `AssertionError` naming the pair when two
    rows give it."""
    built: dict[tuple[S, E], tuple[S, tuple[A, ...]]] = {}
    for states, event, target, actions in rows:
        for state in states:
            if (state, event) in built:
                raise AssertionError(f"two rows for ({state}, {event})")
            built[(state, event)] = (state if target is STAY else target, actions)
    return built


class IllegalTransition(RuntimeError):
    """A (state, event) its table has no row for: a bug in what classified the event, named."""

    def __init__(self, who: str, state: StrEnum, event: StrEnum, noun: str = "state") -> None:
        super().__init__(f"{who}: no transition for event {event.value!r} in {noun} {state.value!r}")
        self.state = state
        self.event = event
