"""SqliteStore: the writer's connection in its thread, where every `run` is one IMMEDIATE transaction, and a
read-only connection in a thread of its own beside it (WAL)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.store import StoreError, Txn
from gateway.store.sqlite.schema import migrate
from gateway.store.sqlite.txn import SqliteTxn

R = TypeVar("R")


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store")
        self._db: sqlite3.Connection | None = None
        # reads on a connection and thread of their own: WAL lets them run beside the writer's
        # transaction instead of queueing behind it for BEGIN IMMEDIATE
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store-read")
        self._reader: sqlite3.Connection | None = None
        self._migrated: list[int] = []

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @property
    def migrated(self) -> list[int]:
        return list(self._migrated)

    @property
    def shared(self) -> bool:
        return False

    async def notifications(self) -> AsyncIterator[bytes]:
        await asyncio.Event().wait()  # a file one instance has to itself: nobody else notifies
        yield b""  # pragma: no cover - never reached

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=10000")
        try:
            self._migrated = migrate(db, str(self.path))
        except BaseException:
            db.close()
            raise
        self._db = db

    def _open_reader(self) -> None:
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.execute("PRAGMA query_only=1")  # a write through it fails: reads only
        reader.execute("PRAGMA busy_timeout=10000")
        self._reader = reader

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)  # migrations first, by the writer
            await loop.run_in_executor(self._read_executor, self._open_reader)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        reader, self._reader = self._reader, None
        if reader is not None:
            await loop.run_in_executor(self._read_executor, reader.close)
        self._read_executor.shutdown(wait=True)
        db, self._db = self._db, None
        if db is not None:
            await loop.run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)

    def _run(self, fn: Callable[[Txn], R]) -> R:
        db = self._db
        if db is None:
            raise StoreError("store is closed")
        db.execute("BEGIN IMMEDIATE")
        try:
            txn = SqliteTxn(db)
            result = fn(txn)
            txn.flush()
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    async def run(self, fn: Callable[[Txn], R]) -> R:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, fn)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _read(self, fn: Callable[[Txn], R]) -> R:
        db = self._reader
        if db is None:
            raise StoreError("store is closed")
        db.execute("BEGIN DEFERRED")  # one snapshot for the whole of fn
        try:
            txn = SqliteTxn(db)
            result = fn(txn)
            txn.flush()  # a write queued by a read fails here, on the read-only connection
            return result
        finally:
            db.execute("COMMIT")

    async def published(self, ids: list[int]) -> None:
        # one writer per file: the delete waits for the write lock either way, so it queues behind the
        # writer's transactions instead of contending for the lock from a connection of its own
        await self.run(lambda t: t.outbox_delete(ids))

    async def read(self, fn: Callable[[Txn], R]) -> R:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._read_executor, self._read, fn)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc
