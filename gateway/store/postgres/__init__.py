"""PostgreSQL store (psycopg 3): the SQLite store's contract on a server that several instances can reach.

Like the SQLite store, one connection is owned by one thread and every `run` is one transaction on it:
this instance's transactions commit one after another, in the order they ran. Several instances'
transactions overlap, so outbox ids need not commit in id order (`shared`: the publisher keeps no
cursor; docs/cluster.md says how the partitions, leases and claims work and why order still holds).

Round trips, not rows, are the cost (bench/store.py). A write whose answer the caller does not need
(events, outbox rows, queue places, timers, commands, wamids, blacklist) is queued and sent with the
other writes to its table as one `executemany` (one round trip, psycopg pipelines it) when a read needs
that table or at commit. `put_contact` stays a compare-and-set on `sequence`: when this transaction
itself read or wrote the contact at `expected_sequence`, the write is queued with its `WHERE sequence`
and its row count checked when it is sent (a miss — another instance moved the contact in between —
raises Conflict, and the engine decides the batch again); otherwise it runs at once and returns False
when the stored sequence moved.

Connection loss: the transaction is rolled back with the connection and `run` reconnects with backoff
(jittered, 50 ms doubling to 2 s) and runs `fn` again on fresh state, as the engine does after a
Conflict; `is_open` is False meanwhile (/readyz 503). When the connection broke during COMMIT, the
outcome is read from the transaction's commit mark: every transaction that wrote also sets this store's
row in `commit_marks` to a fresh token, in the same transaction. After reconnecting, the row is read
`FOR SHARE` (which waits for a COMMIT still under way on the old connection): our token means the first
result stands (never decided twice), any other means `fn` runs again (never lost).

Not `pg_xact_status(xid)`: a server that crashes loses the WAL of transactions that had not committed,
and after recovery it hands their transaction ids out again. Another of our own transactions (the
outbox publisher's delete, a timer) could then commit under the lost transaction's id before the
verdict was asked, and the lost batch was taken for committed: its dials went out, its writes were gone,
and the same contacts were dialled again for the same attempt (test_postgres_killed_and_restarted_mid_run).
After `outage_s` without the server, `run` raises StoreError.

Layout (one concept per module): `store.py` PostgresStore, its threads and connections, and `run` with
reconnection and the commit verdict; `connection.py` connecting, LISTEN, a lost connection and the commit
mark, backoff and the race errors; `schema.py` the migrations; `txn.py` the transaction, assembled from
`batch.py` (the write queue: executemany, pipelines, COPY, the compare-and-set check) and one module per
group of tables — `contacts.py` (contacts, the ready queue, the dispatch turn's lock and counts),
`outbox.py` (events, outbox and dead letters), `timers.py`, `campaigns.py` (campaigns and their counters),
`cluster.py` (members, leases, outbox partitions, NOTIFY), `blacklist.py`, `commands.py`,
`whatsapp.py` (wamids, inbound message ids, marketing opt-outs, template states) and `numbers.py` (each
number's attempts, refusals, opt-outs and abandons over every campaign, and the lock on a number).
"""

from gateway.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
