from __future__ import annotations

import pytest

from sip.outcome import Outcome, final_outcome

OC = Outcome


@pytest.mark.parametrize(
    ("status", "q850", "expected"),
    [
        (486, None, OC.REJECTED),
        (600, None, OC.REJECTED),
        (603, None, OC.REJECTED),
        (607, None, OC.REJECTED),
        (608, None, OC.REJECTED),
        (480, 17, OC.REJECTED),
        (503, 21, OC.REJECTED),
        (480, None, OC.UNREACHABLE),
        (408, None, OC.UNREACHABLE),
        (487, None, OC.UNREACHABLE),
        (503, 34, OC.UNREACHABLE),
        (500, 38, OC.UNREACHABLE),
        (502, 41, OC.UNREACHABLE),
        (503, 42, OC.UNREACHABLE),
        (486, 18, OC.UNREACHABLE),
        (404, 19, OC.UNREACHABLE),
        (603, 20, OC.UNREACHABLE),
        (404, None, OC.INVALID_NUMBER),
        (484, None, OC.INVALID_NUMBER),
        (485, None, OC.INVALID_NUMBER),
        (604, None, OC.INVALID_NUMBER),
        (480, 1, OC.INVALID_NUMBER),
        (503, 3, OC.INVALID_NUMBER),
        (500, 28, OC.INVALID_NUMBER),
        (503, None, OC.FAILED),
        (500, 16, OC.FAILED),
        (480, 34, OC.UNREACHABLE),
        (403, None, OC.FAILED),
        (402, None, OC.FAILED),
        (488, None, OC.FAILED),
        (606, None, OC.FAILED),
        (420, None, OC.FAILED),
        (302, None, OC.FAILED),
        (401, None, OC.FAILED),
        (407, None, OC.FAILED),
    ],
)
def test_signal_table(status: int, q850: int | None, expected: Outcome) -> None:
    assert final_outcome(status, q850) is expected
