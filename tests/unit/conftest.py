"""Shared fixtures of the pure-core tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.contract.topics import Topics
from gateway.engine.engine import Engine
from gateway.store.sqlite import SqliteStore
from metrics.recorder import Recorder


@pytest.fixture
async def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    eng = Engine(store, "gw", Topics("telgate"), Recorder("test"))
    task = asyncio.create_task(eng.run())
    yield eng
    task.cancel()
    await store.close()
