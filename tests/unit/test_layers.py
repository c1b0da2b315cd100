"""The shape the engine promises (DESIGN habit 13, issue 12): pieces of work read through `Unit.read`
and decide through the domain; only gateway/commit.py and the Unit that calls it write to a store
transaction. A module that reached into the transaction again would pass every behaviour test and
still break the rule, so the rule is checked here, on the source."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"
WRITERS = {"commit.py", "engine.py"}  # and gateway/store/, which implements the transaction


def test_no_module_outside_the_commit_layer_reaches_into_a_units_transaction() -> None:
    offenders = []
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = path.relative_to(GATEWAY)
        if rel.parts[0] == "store" or rel.name in WRITERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("txn", "_txn"):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"write through Unit's methods (gateway/commit.py), not its transaction: {offenders}"
