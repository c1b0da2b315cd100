"""The shape the engine promises (DESIGN habit 13, issue 12): pieces of work read through `Unit.read`
and decide through the domain; only gateway/engine/commit.py and the Unit that calls it write to a store
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
    assert not offenders, f"write through Unit's methods (gateway/engine/commit.py), not its transaction: {offenders}"


# The one-way imports (issue 23): the folder names are the architecture, and each layer may import only
# the layers below it. `sip/`, `whatsapp/` and `metrics/` know nothing of contacts; the domain knows
# nothing of I/O; the engine knows no channel, bus or service; only the service wiring and the
# backend-side tools sit on top. A new import that points upwards fails here, naming the file and line.
ALLOWED: dict[str, set[str]] = {
    "sip": set(),
    "whatsapp": set(),
    "metrics": set(),
    "gateway.domain": set(),
    "gateway.(top)": {"gateway.domain", "sip"},  # config, logs, the version: read by every layer above the domain
    "gateway.store": {"gateway.domain", "gateway.(top)"},
    "gateway.contract": {"gateway.domain", "gateway.(top)", "sip"},
    "gateway.engine": {"gateway.domain", "gateway.contract", "gateway.store", "gateway.(top)", "metrics", "sip"},
    "gateway.cluster": {"gateway.engine", "gateway.store", "gateway.(top)", "metrics"},
    "gateway.bus": {
        "gateway.contract",
        "gateway.domain",
        "gateway.engine",
        "gateway.store",
        "gateway.(top)",
        "metrics",
        "sip",
    },
    "gateway.channels": {
        "gateway.contract",
        "gateway.domain",
        "gateway.engine",
        "gateway.store",
        "gateway.(top)",
        "metrics",
        "sip",
        "whatsapp",
    },
}
TOP = {"gateway.service", "gateway.tools"}  # may import anything below; nothing below imports them
ROOT = GATEWAY.parent


PACKAGES = {p.name for p in GATEWAY.iterdir() if (p / "__init__.py").exists()}


def _layer(parts: tuple[str, ...]) -> str:
    if parts[0] != "gateway":
        return parts[0]
    if len(parts) > 1 and parts[1] == "__main__":
        return "gateway.service"
    return "gateway." + (parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "(top)")


def test_every_import_between_packages_points_down() -> None:
    offenders = []
    for top in ("gateway", "sip", "whatsapp", "metrics"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            src = _layer(rel.with_suffix("").parts)
            if src in TOP:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods = [node.module]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                for mod in mods:
                    parts = tuple(mod.split("."))
                    if parts[0] not in ("gateway", "sip", "whatsapp", "metrics"):
                        continue
                    dst = _layer(parts)
                    if dst != src and dst not in ALLOWED[src]:
                        offenders.append(f"{rel}:{node.lineno} {src} imports {dst}")
    assert not offenders, "an import points up the layers:\n" + "\n".join(offenders)


def test_relative_imports_stay_inside_their_package() -> None:
    """Imports across packages are absolute, so the check above sees them all."""
    offenders = []
    for path in sorted(GATEWAY.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 1:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_no_module_writes_through_unit_read() -> None:
    """`Unit.read` is the open transaction typed as `Reads`; a write called on it (`unit.read.put_contact`,
    or through a cast) would commit beside the decision, not as one. Every call on `.read` must be a read."""
    from gateway.store import Reads, Txn

    reads = {name for name in dir(Reads) if not name.startswith("_")}
    writes = {name for name in dir(Txn) if not name.startswith("_")} - reads
    assert "put_contact" in writes and "get_contact" in reads  # the protocols are what this test thinks
    offenders = []
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = path.relative_to(GATEWAY)
        if rel.parts[0] == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in writes
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "read"
            ):
                offenders.append(f"{rel}:{node.lineno} .read.{node.attr}")
    assert not offenders, f"a write through Unit.read: {offenders}"
