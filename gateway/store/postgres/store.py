"""PostgresStore: the writer connection and its thread, where every `run` is one transaction (reconnected
with backoff, a COMMIT cut off settled by its commit mark), beside a read-only connection for reads that
decide nothing and an autocommitted one for the publisher's deletes."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import psycopg

from gateway.store import Conflict, StoreError, Txn
from gateway.store.postgres.connection import VERDICT, Backoff, Lost, connect, find_race, listen
from gateway.store.postgres.schema import migrate
from gateway.store.postgres.txn import PgTxn

log = logging.getLogger("telgate.store")
R = TypeVar("R")


class PostgresStore:
    def __init__(self, url: str, outage_s: float = 120.0, connect_timeout_s: int = 5) -> None:
        self.url = url
        self.outage_s = outage_s
        self.connect_timeout_s = connect_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store")
        self._conn: psycopg.Connection[Any] | None = None
        # reads on a read-only connection and thread of their own, beside the writer's transactions
        self._read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store-read")
        self._reader: psycopg.Connection[Any] | None = None
        # the publisher's deletes of acknowledged rows, beside the writer (they decide nothing, and running
        # one again is harmless): a transaction of their own every 20 ms was a tenth of the writer's thread
        self._ack_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="telgate-store-ack")
        self._acker: psycopg.Connection[Any] | None = None
        self._writer_pid = 0  # the writer connection's server process: its NOTIFYs are this instance's own
        self._migrated: list[int] = []
        self._closed = False
        self._lost_at: float | None = None
        self.owner = secrets.token_hex(8)  # this store's row in commit_marks

    @property
    def is_open(self) -> bool:
        conn = self._conn
        return not self._closed and conn is not None and not conn.closed and not conn.broken

    @property
    def migrated(self) -> list[int]:
        return list(self._migrated)

    @property
    def shared(self) -> bool:
        return True

    def notifications(self) -> AsyncIterator[bytes]:
        """What the other instances NOTIFY (connection.listen); this instance's own are left out."""
        return listen(self.url, self.connect_timeout_s, lambda: self._closed, lambda: self._writer_pid)

    # -- in the store thread ----------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._drop("connection broken")
        try:
            conn = connect(self.url, self.connect_timeout_s)
        except psycopg.OperationalError as exc:
            raise Lost(f"cannot connect: {exc}") from exc
        self._conn = conn
        self._writer_pid = conn.info.backend_pid
        if self._lost_at is not None:
            log.warning("store reconnected", extra={"down_s": round(time.monotonic() - self._lost_at, 3)})
            self._lost_at = None
        return conn

    def _drop(self, why: str) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            if self._lost_at is None:
                self._lost_at = time.monotonic()
                log.warning("store connection lost", extra={"detail": why})

    def _open(self) -> None:
        conn = connect(self.url, self.connect_timeout_s)
        try:
            self._migrated = migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._writer_pid = conn.info.backend_pid

    def _run(self, fn: Callable[[Txn], R]) -> R:
        conn = self._connection()
        try:
            txn = PgTxn(conn)
            result = fn(txn)
            token = txn.finish(self.owner)
        except BaseException as exc:
            if conn.broken:  # whatever fn made of the failure, the cause is the connection
                self._drop(str(exc))
                raise Lost(str(exc)) from exc
            try:
                conn.rollback()
            except psycopg.OperationalError as lost:
                self._drop(str(lost))
                raise Lost(str(lost)) from exc
            race = find_race(exc)
            if race is not None:  # the server chose this transaction to end a deadlock: decide again
                raise Conflict(f"{type(race).__name__}: {race}") from exc
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc
            raise
        try:
            conn.commit()
        except psycopg.Error as exc:
            if not conn.broken:
                raise StoreError(f"COMMIT failed: {exc}") from exc
            self._drop(str(exc))
            if token is None:  # it wrote nothing: what it read stands
                return result
            raise Lost(str(exc), token, result) from exc
        return result

    def _verdict(self, token: int) -> str:
        """After a COMMIT whose answer was lost: 'committed', 'aborted' or 'in progress' (the old
        connection's backend still holds the mark's row after `lock_timeout`)."""
        conn = self._connection()
        try:
            conn.execute("SET LOCAL lock_timeout = '5s'")
            row = conn.execute(VERDICT, (self.owner,)).fetchone()
            conn.commit()
        except psycopg.errors.LockNotAvailable:
            conn.rollback()
            return "in progress"
        except psycopg.OperationalError as exc:
            if conn.broken:
                self._drop(str(exc))
                raise Lost(str(exc)) from exc
            raise
        return "committed" if row is not None and row[0] == token else "aborted"

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _read(self, fn: Callable[[Txn], R]) -> R:
        """In the reading thread: `fn` in one read-only REPEATABLE READ transaction (one snapshot)."""
        conn = self._reader
        if conn is None or conn.closed or conn.broken:
            self._reader = None
            try:
                conn = self._reader = connect(self.url, self.connect_timeout_s, read_only=True)
            except psycopg.OperationalError as exc:
                raise Lost(f"cannot connect: {exc}") from exc
        try:
            txn = PgTxn(conn, read_only=True)
            result = fn(txn)
            txn._flush()  # a write queued by mistake reaches the server and fails there, never dropped
            conn.commit()
        except BaseException as exc:
            if conn.broken:
                self._reader = None
                conn.close()
                raise Lost(str(exc)) from exc
            conn.rollback()
            raise
        return result

    def _close_reader(self) -> None:
        conn, self._reader = self._reader, None
        if conn is not None:
            conn.close()

    def _published(self, ids: list[int]) -> None:
        """In the ack thread: one autocommitted UPDATE on a connection of its own (no commit mark: a delete
        whose answer was lost is sent again, and a second one changes nothing)."""
        conn = self._acker
        if conn is None or conn.closed or conn.broken:
            self._acker = None
            try:
                conn = self._acker = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=self.connect_timeout_s, application_name="telgate-ack"
                )
            except psycopg.OperationalError as exc:
                raise Lost(f"cannot connect: {exc}") from exc
        try:
            conn.execute("UPDATE messages SET pending = false WHERE id = ANY(%s) AND pending", (ids,))
        except psycopg.Error as exc:
            if conn.broken:
                self._acker = None
                conn.close()
                raise Lost(str(exc)) from exc
            raise

    def _close_acker(self) -> None:
        conn, self._acker = self._acker, None
        if conn is not None:
            conn.close()

    # -- the event loop's side ------------------------------------------------------------------
    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the PostgreSQL store: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._read_executor, self._close_reader)
        self._read_executor.shutdown(wait=True)
        await loop.run_in_executor(self._ack_executor, self._close_acker)
        self._ack_executor.shutdown(wait=True)
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    async def read(self, fn: Callable[[Txn], R]) -> R:
        """Like `run`, on the read-only connection; a lost connection is reconnected and `fn` run again
        (it decides nothing, so running it again is always safe)."""
        return await self._again(self._read_executor, self._read, fn)

    async def published(self, ids: list[int]) -> None:
        await self._again(self._ack_executor, self._published, ids)

    async def _again(self, executor: ThreadPoolExecutor, call: Callable[[Any], R], arg: Any) -> R:
        """`call(arg)` in `executor`'s thread, again after a lost connection (with backoff) until it
        answers: for what is safe to run twice."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.outage_s)
        while True:
            if self._closed:
                raise StoreError("store is closed")
            try:
                return await loop.run_in_executor(executor, call, arg)
            except Lost as lost:
                await backoff.wait(lost)
            except psycopg.Error as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    async def run(self, fn: Callable[[Txn], R]) -> R:
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.outage_s)
        unsure: Lost | None = None  # a COMMIT whose outcome is still to be learnt
        while True:
            if self._closed:
                raise StoreError("store is closed")
            try:
                if unsure is not None:
                    assert unsure.token is not None
                    verdict = await loop.run_in_executor(self._executor, self._verdict, unsure.token)
                    log.warning("outcome of a COMMIT cut off", extra={"token": unsure.token, "verdict": verdict})
                    if verdict == "committed":
                        return cast(R, unsure.result)
                    if verdict == "in progress":
                        raise Lost("the cut-off COMMIT is still under way on the old connection")
                    unsure = None  # aborted: decide again
                return await loop.run_in_executor(self._executor, self._run, fn)
            except Lost as lost:
                if lost.token is not None:
                    unsure = lost
                await backoff.wait(lost)
            except psycopg.Error as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc
