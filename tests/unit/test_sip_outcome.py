from __future__ import annotations

import pytest

from sip.outcome import Outcome, final_outcome

O = Outcome


@pytest.mark.parametrize(
    ("status", "q850", "expected"),
    [
        (486, None, O.REJECTED),
        (600, None, O.REJECTED),
        (603, None, O.REJECTED),
        (607, None, O.REJECTED),
        (608, None, O.REJECTED),
        (480, 17, O.REJECTED),
        (503, 21, O.REJECTED),
        (480, None, O.UNREACHABLE),
        (408, None, O.UNREACHABLE),
        (487, None, O.UNREACHABLE),
        (503, 34, O.UNREACHABLE),
        (500, 38, O.UNREACHABLE),
        (502, 41, O.UNREACHABLE),
        (503, 42, O.UNREACHABLE),
        (486, 18, O.UNREACHABLE),
        (404, 19, O.UNREACHABLE),
        (603, 20, O.UNREACHABLE),
        (404, None, O.INVALID_NUMBER),
        (484, None, O.INVALID_NUMBER),
        (485, None, O.INVALID_NUMBER),
        (604, None, O.INVALID_NUMBER),
        (480, 1, O.INVALID_NUMBER),
        (503, 3, O.INVALID_NUMBER),
        (500, 28, O.INVALID_NUMBER),
        (503, None, O.FAILED),
        (500, 16, O.FAILED),
        (480, 34, O.UNREACHABLE),
        (403, None, O.FAILED),
        (402, None, O.FAILED),
        (488, None, O.FAILED),
        (606, None, O.FAILED),
        (420, None, O.FAILED),
        (302, None, O.FAILED),
        (401, None, O.FAILED),
        (407, None, O.FAILED),
    ],
)
def test_signal_table(status: int, q850: int | None, expected: Outcome) -> None:
    assert final_outcome(status, q850) is expected
