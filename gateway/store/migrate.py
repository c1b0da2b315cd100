"""Versioned schema migrations, for both stores.

Each store lists its migrations as ordered steps (`Migration(version, what, statements)`); the versions
mean the same change in both stores. A `schema_version` table records what was applied. `open()` applies
what is missing, each step in a transaction of its own with its row in `schema_version`, so a step is
applied whole or not at all and a second `open()` applies nothing. A store whose schema is newer than
this build refuses to open (a downgrade would write rows the newer schema does not expect).

Version 1 is the schema every SQLite file had before migrations existed, written with `IF NOT EXISTS`:
such a file is adopted as version 1 as it is, with its data.

`telgate migrate` applies them without starting the service: `await migrate(store_url)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.store import StoreError, open_store


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    what: str
    statements: tuple[str, ...]


def pending(migrations: Sequence[Migration], current: int, where: str) -> list[Migration]:
    """The steps after `current`, in order; refuses a schema newer than the newest step."""
    versions = [m.version for m in migrations]
    assert versions == list(range(1, len(versions) + 1)), "migrations are numbered 1, 2, 3, … without gaps"
    if current > len(migrations):
        raise StoreError(
            f"{where} has schema version {current}; this build knows up to {len(migrations)} (upgrade telgate)"
        )
    return list(migrations[current:])


async def migrate(url: str) -> list[int]:
    """Apply the missing migrations to the store at `url`; the versions applied (empty: up to date)."""
    store = open_store(url)
    try:
        await store.open()
        return list(store.migrated)
    finally:
        await store.close()
