"""Every asyncio task has an owner (DESIGN habit 7, issue 23): a TaskGroup, or an object that cancels and
awaits it when it closes. `asyncio.create_task`, `ensure_future` and a loop's `create_task` appear only
where an owner is named below; the owners end what they started, also when they fail to start."""

from __future__ import annotations

import ast
import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.bus.mqtt_io import Receiver
from gateway.tools.submit import BusTarget, CommandWindow

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "sip", "whatsapp", "metrics")
# (module, function) → who owns the task it makes
OWNED = {
    ("gateway/bus/mqtt_io.py", "get"): "Receiver: `aclose` (its `async with`) cancels and awaits the wait",
}


def _unowned_task_calls(path: Path) -> list[tuple[str, int]]:
    """(function, line) of each call that makes a task outside a task group: `asyncio.create_task`,
    `asyncio.ensure_future`, `<loop>.create_task` (a receiver named `loop` or a `get_*_loop()` call)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute):
                name, owner = child.func.attr, child.func.value
                by_asyncio = isinstance(owner, ast.Name) and owner.id == "asyncio"
                by_loop = (isinstance(owner, ast.Name) and owner.id.endswith("loop")) or (
                    isinstance(owner, ast.Call)
                    and isinstance(owner.func, ast.Attribute)
                    and owner.func.attr in ("get_running_loop", "get_event_loop")
                )
                if (name == "ensure_future" and by_asyncio) or (name == "create_task" and (by_asyncio or by_loop)):
                    found.append((function, child.lineno))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def test_every_task_outside_a_task_group_has_a_named_owner() -> None:
    unowned = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = path.relative_to(ROOT).as_posix()
            for function, line in _unowned_task_calls(path):
                if (module, function) not in OWNED:
                    unowned.append(f"{module}:{line} in {function}()")
    assert not unowned, "a task without an owner (use a TaskGroup, or name the owner in OWNED): " + ", ".join(unowned)


def test_the_guard_sees_the_shapes_it_forbids(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import asyncio\n"
        "async def f(tg):\n"
        "    asyncio.create_task(g())\n"
        "    asyncio.ensure_future(g())\n"
        "    asyncio.get_running_loop().create_task(g())\n"
        "    loop.create_task(g())\n"
        "    tg.create_task(g())\n"
    )
    assert [line for _, line in _unowned_task_calls(sample)] == [3, 4, 5, 6]


class _Silent:
    """A client whose message stream never yields: every wait for a message stays pending."""

    @property
    def messages(self) -> AsyncIterator[Any]:
        async def never() -> AsyncIterator[Any]:
            await asyncio.Event().wait()
            yield None  # pragma: no cover - never reached

        return never()


def _named(prefix: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


async def test_the_receiver_ends_its_pending_wait_when_it_closes() -> None:
    async with Receiver(_Silent()) as receiver:  # type: ignore[arg-type]
        assert await receiver.get(0.01) is None  # timed out: the wait goes on, for the next get
        assert len(_named("mqtt-receiver-next")) == 1
    assert _named("mqtt-receiver-next") == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once it is closed


async def test_a_window_whose_first_connection_fails_raises_and_leaves_no_task() -> None:
    target = BusTarget(url=f"mqtt://127.0.0.1:{_closed_port()}", client_id="owners-test")
    with pytest.raises(aiomqtt.MqttError):
        async with CommandWindow(target):
            pass  # pragma: no cover - never entered
    assert _named("window-") == []
