"""Transition tables as data (DESIGN habit 3), shared by the call's phase table (`sip.call`) and the client
transactions' tables (`sip.transaction`).

A table is written as rows `(states, event, target, actions)`: in each of `states`, `event` moves to `target`
(`STAY`: the state does not change) and runs `actions` in order. `table(rows)` turns them into one dict
keyed by (state, event) and refuses, at import, two rows for the same pair. What has no row is illegal: the
caller raises `IllegalTransition`, which names the state and the event.

`step` takes one row: the next state and its actions, the timers the next state does not allow dropped
(each table says in which states each of its timers may run); the caller sets the state, then runs the
actions in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import TypeVar

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)
A = TypeVar("A", bound=StrEnum)
T = TypeVar("T", bound=StrEnum)

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


def step(
    rows: Mapping[tuple[S, E], tuple[S, tuple[A, ...]]],
    state: S,
    event: E,
    due: dict[T, float],
    allowed: Mapping[T, frozenset[S]],
    illegal: Callable[[], Exception],
) -> tuple[S, tuple[A, ...]]:
    """The row for (`state`, `event`): the next state and the actions; raises `illegal()` when there is none.
    Leaving `state`, the deadlines in `due` of timers not `allowed` in the next state are dropped."""
    row = rows.get((state, event))
    if row is None:
        raise illegal()
    target = row[0]
    if target is not state:
        for timer in [t for t in due if target not in allowed[t]]:
            del due[timer]
    return row


class IllegalTransition(RuntimeError):
    """A (state, event) its table has no row for: a bug in what classified the event, named."""

    def __init__(self, who: str, state: StrEnum, event: StrEnum, noun: str = "state") -> None:
        super().__init__(f"{who}: no transition for event {event.value!r} in {noun} {state.value!r}")
        self.state = state
        self.event = event
