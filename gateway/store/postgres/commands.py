"""Command ids and their results: a command sent again is answered with the first result."""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.store.postgres.batch import WriteBatch


class Commands(WriteBatch):
    def __init__(self, conn: psycopg.Connection[Any], read_only: bool = False) -> None:
        super().__init__(conn, read_only)
        self._commands: dict[str, bytes | None] = {}  # command ids read (prefetched) or written here

    def get_command(self, command_id: str) -> bytes | None:
        if command_id in self._commands:
            return self._commands[command_id]
        self._flush("commands")
        row = self._one("SELECT result FROM commands WHERE command_id=%s", (command_id,))
        result = None if row is None else bytes(row[0])
        self._commands[command_id] = result
        return result

    def put_command(self, command_id: str, result: bytes) -> None:
        self._commands[command_id] = result
        self._queue(
            "commands",
            "INSERT INTO commands (command_id, result) VALUES (%s,%s) ON CONFLICT (command_id)"
            " DO UPDATE SET result=excluded.result, created_at=excluded.created_at",
            (command_id, result),
            command_id,
        )
