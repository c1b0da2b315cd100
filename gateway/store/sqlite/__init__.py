"""SQLite store: one connection owned by one thread; every `run` is one IMMEDIATE transaction.

WAL with synchronous=FULL: a committed decision survives a crash and a power loss; the engine's group
commit amortises the fsync over a batch of decisions.

Layout: `store.py` SqliteStore (the writer's and the reader's connections, each in a thread of its own),
`txn.py` the transaction (every table's reads and writes, the queued INSERTs), `schema.py` the migrations.
"""

from gateway.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
