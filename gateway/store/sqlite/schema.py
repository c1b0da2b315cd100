"""The SQLite store's schema: its migrations (the DDL of each version) and how they are applied at
`open()`."""

from __future__ import annotations

import sqlite3
import time

from gateway.store.migrate import Migration, pending

MIGRATIONS = (
    Migration(
        1,
        "the schema before versioned migrations (an existing file is adopted as it is)",
        (
            """CREATE TABLE IF NOT EXISTS contacts (
                campaign_id TEXT NOT NULL,
                contact_id TEXT NOT NULL,
                channel TEXT NOT NULL,
                status TEXT NOT NULL,
                sequence INTEGER NOT NULL,
                in_flight INTEGER NOT NULL DEFAULT 0,
                owner TEXT,
                ready_at REAL,
                priority INTEGER NOT NULL DEFAULT 1,
                state TEXT NOT NULL,
                PRIMARY KEY (campaign_id, contact_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX IF NOT EXISTS contacts_ready ON contacts (channel, priority, ready_at)"
            " WHERE ready_at IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS contacts_in_flight ON contacts (owner) WHERE in_flight = 1",
            # every bus message and every contact event, written once: `pending` rows are the outbox
            # (published in id order, cleared on PUBACK); rows with a contact are its event history
            """CREATE TABLE IF NOT EXISTS messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                retain INTEGER NOT NULL DEFAULT 0,
                correlation BLOB,
                created_at REAL NOT NULL,
                pending INTEGER NOT NULL,
                campaign_id TEXT,
                contact_id TEXT
            )""",
            "CREATE INDEX IF NOT EXISTS messages_pending ON messages (id) WHERE pending = 1",
            "CREATE INDEX IF NOT EXISTS messages_contact ON messages (campaign_id, contact_id)"
            " WHERE contact_id IS NOT NULL",
            """CREATE TABLE IF NOT EXISTS campaigns (
                campaign_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                status TEXT NOT NULL,
                dialed_contacts INTEGER NOT NULL DEFAULT 0,
                talk_seconds REAL NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE IF NOT EXISTS timers (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                campaign_id TEXT NOT NULL,
                contact_id TEXT,
                due_at REAL NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS timers_due ON timers (due_at)",
            "CREATE INDEX IF NOT EXISTS timers_contact ON timers (campaign_id, contact_id)",
            "CREATE TABLE IF NOT EXISTS blacklist (phone TEXT PRIMARY KEY)",
            "CREATE TABLE IF NOT EXISTS commands"
            " (command_id TEXT PRIMARY KEY, result BLOB NOT NULL, created_at REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS wamids"
            " (wamid TEXT PRIMARY KEY, campaign_id TEXT NOT NULL, contact_id TEXT NOT NULL)",
        ),
    ),
    Migration(
        2,
        "retention: wamids get a created_at (existing ones count from the upgrade), indexes to prune by age",
        (
            "ALTER TABLE wamids ADD COLUMN created_at REAL",
            "UPDATE wamids SET created_at = (julianday('now') - 2440587.5) * 86400.0",
            "CREATE INDEX messages_history ON messages (created_at) WHERE pending = 0",
            "CREATE INDEX commands_created ON commands (created_at)",
            "CREATE INDEX wamids_created ON wamids (created_at)",
        ),
    ),
    # the same version in both stores: a COMMIT on a local file has no answer to lose, so nothing here
    Migration(3, "commit marks (PostgreSQL only: the outcome of a COMMIT whose answer was lost)", ()),
    Migration(4, "members, partitions and leases (PostgreSQL only: one instance has a SQLite file to itself)", ()),
    Migration(
        5,
        "dead letters: outbox rows that can never be published, moved aside with the reason",
        (
            # `id` is the outbox row's (AUTOINCREMENT: never handed out twice); `part` is always 0 here
            """CREATE TABLE dead_letters (
                id INTEGER PRIMARY KEY,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                retain INTEGER NOT NULL DEFAULT 0,
                correlation BLOB,
                part INTEGER NOT NULL DEFAULT 0,
                reason TEXT NOT NULL,
                created_at REAL NOT NULL,
                dead_at REAL NOT NULL
            )""",
            "CREATE INDEX dead_letters_at ON dead_letters (dead_at)",
        ),
    ),
    Migration(
        6,
        "WhatsApp inbound: message ids seen (dedup), marketing opt-outs, template states; contacts by number",
        (
            "CREATE TABLE inbound_messages"
            " (wamid TEXT PRIMARY KEY, phone_number_id TEXT NOT NULL, received_at REAL NOT NULL)",
            "CREATE INDEX inbound_messages_received ON inbound_messages (received_at)",
            "CREATE TABLE marketing_opt_outs (phone TEXT PRIMARY KEY, since REAL NOT NULL)",
            """CREATE TABLE template_states (
                name TEXT NOT NULL,
                language TEXT NOT NULL,
                status TEXT NOT NULL,
                reason TEXT,
                updated_at REAL NOT NULL,
                PRIMARY KEY (name, language)
            ) WITHOUT ROWID""",
            # a contact's number and creation time as columns (written at its INSERT; neither changes
            # after it), for `latest_contact_by_phone`; existing contacts take them from their state
            "ALTER TABLE contacts ADD COLUMN phone TEXT",
            "ALTER TABLE contacts ADD COLUMN created_at REAL",
            "UPDATE contacts SET phone = json_extract(state, '$.phone'),"
            " created_at = (julianday(json_extract(state, '$.created_at')) - 2440587.5) * 86400.0"
            " WHERE json_extract(state, '$.phone') IS NOT NULL",
            # newest first by a backward scan; the key (campaign_id, contact_id) ends every entry
            "CREATE INDEX contacts_phone ON contacts (channel, phone, created_at) WHERE phone IS NOT NULL",
        ),
    ),
    Migration(
        7,
        "lawful calling: what happened to each number over every campaign (attempts, refusals, opt-outs, abandons)",
        (
            "CREATE TABLE number_history"
            " (phone TEXT NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL, campaign_id TEXT NOT NULL)",
            # "this number since T": one range scan
            "CREATE INDEX number_history_phone ON number_history (phone, at)",
        ),
    ),
)


def migrate(db: sqlite3.Connection, where: str) -> list[int]:
    """Each missing step in an IMMEDIATE transaction of its own, re-reading the version under the lock."""
    applied: list[int] = []
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version"
                " (version INTEGER PRIMARY KEY, what TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            current = db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            steps = pending(MIGRATIONS, current, where)
            if steps:
                for statement in steps[0].statements:
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_version (version, what, applied_at) VALUES (?,?,?)",
                    (steps[0].version, steps[0].what, time.time()),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if not steps:
            return applied
        applied.append(steps[0].version)
