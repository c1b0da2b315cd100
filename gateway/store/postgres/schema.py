"""The PostgreSQL store's schema: its migrations (the DDL of each version) and how an instance applies
them at `open()`."""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.store import PARTS
from gateway.store.migrate import Migration, pending

MIGRATION_LOCK = 0x74656C67  # pg_advisory_xact_lock key: one instance migrates at a time

MIGRATIONS = (
    Migration(
        1,
        "contacts, messages (events + outbox), campaigns, timers, blacklist, commands, wamids",
        (
            """CREATE TABLE contacts (
                campaign_id text NOT NULL,
                contact_id text NOT NULL,
                channel text NOT NULL,
                status text NOT NULL,
                sequence integer NOT NULL,
                in_flight boolean NOT NULL DEFAULT false,
                owner text,
                ready_at timestamptz,
                priority integer NOT NULL DEFAULT 1,
                state text NOT NULL,
                PRIMARY KEY (campaign_id, contact_id)
            )""",
            # the dispatch queue in its order, ties broken as SQLite's index breaks them (by key)
            "CREATE INDEX contacts_ready ON contacts (channel, priority, ready_at, campaign_id, contact_id)"
            " WHERE ready_at IS NOT NULL",
            "CREATE INDEX contacts_in_flight ON contacts (owner) WHERE in_flight",
            """CREATE TABLE messages (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                topic text NOT NULL,
                payload bytea NOT NULL,
                retain boolean NOT NULL DEFAULT false,
                correlation bytea,
                created_at timestamptz NOT NULL DEFAULT now(),
                pending boolean NOT NULL,
                campaign_id text,
                contact_id text
            )""",
            "CREATE INDEX messages_pending ON messages (id) WHERE pending",
            "CREATE INDEX messages_contact ON messages (campaign_id, contact_id, id) WHERE contact_id IS NOT NULL",
            """CREATE TABLE campaigns (
                campaign_id text PRIMARY KEY,
                state jsonb NOT NULL,
                status text NOT NULL,
                dialed_contacts integer NOT NULL DEFAULT 0,
                talk_seconds double precision NOT NULL DEFAULT 0
            )""",
            """CREATE TABLE timers (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                kind text NOT NULL,
                campaign_id text NOT NULL,
                contact_id text,
                due_at timestamptz NOT NULL
            )""",
            "CREATE INDEX timers_due ON timers (due_at, id)",
            "CREATE INDEX timers_contact ON timers (campaign_id, contact_id)",
            "CREATE TABLE blacklist (phone text PRIMARY KEY)",
            "CREATE TABLE commands (command_id text PRIMARY KEY, result bytea NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE wamids (wamid text PRIMARY KEY, campaign_id text NOT NULL, contact_id text NOT NULL)",
        ),
    ),
    Migration(
        2,
        "retention: wamids get a created_at (existing ones count from the upgrade), indexes to prune by age",
        (
            "ALTER TABLE wamids ADD COLUMN created_at timestamptz NOT NULL DEFAULT now()",
            "CREATE INDEX messages_history ON messages (created_at) WHERE NOT pending",
            "CREATE INDEX commands_created ON commands (created_at)",
            "CREATE INDEX wamids_created ON wamids (created_at)",
        ),
    ),
    Migration(
        3,
        "commit marks: the outcome of a COMMIT whose answer was lost, one row per store connection",
        (
            "CREATE TABLE commit_marks (owner text PRIMARY KEY, token bigint NOT NULL,"
            " at timestamptz NOT NULL DEFAULT now())",
        ),
    ),
    Migration(
        4,
        "several instances: members and their leases, outbox partitions leased to one member at a time",
        (
            # rows pending at the upgrade stay in partition 0 (docs/cluster.md)
            "ALTER TABLE messages ADD COLUMN part smallint NOT NULL DEFAULT 0",
            "CREATE INDEX messages_pending_part ON messages (part, id) WHERE pending",
            "ALTER TABLE contacts ADD COLUMN version bigint NOT NULL DEFAULT 0",
            """CREATE TABLE members (
                gateway_id text PRIMARY KEY,
                epoch bigint NOT NULL,
                bus_client text NOT NULL DEFAULT '',
                joined_at timestamptz NOT NULL DEFAULT now(),
                expires_at timestamptz NOT NULL
            )""",
            "CREATE TABLE partitions (part integer PRIMARY KEY, owner text, expires_at timestamptz)",
            f"INSERT INTO partitions (part) SELECT generate_series(0, {PARTS - 1})",
            # outbox ids must be handed out in time order across sessions (docs/cluster.md): no cache
            "ALTER TABLE messages ALTER COLUMN id SET CACHE 1",
        ),
    ),
    Migration(
        5,
        "dead letters: outbox rows that can never be published, moved aside with the reason",
        (
            # `id` is the outbox row's (an identity: never handed out twice)
            """CREATE TABLE dead_letters (
                id bigint PRIMARY KEY,
                topic text NOT NULL,
                payload bytea NOT NULL,
                retain boolean NOT NULL DEFAULT false,
                correlation bytea,
                part smallint NOT NULL DEFAULT 0,
                reason text NOT NULL,
                created_at timestamptz NOT NULL,
                dead_at timestamptz NOT NULL DEFAULT now()
            )""",
            "CREATE INDEX dead_letters_at ON dead_letters (dead_at)",
        ),
    ),
    Migration(
        6,
        "WhatsApp inbound: message ids seen (dedup), marketing opt-outs, template states; contacts by number",
        (
            "CREATE TABLE inbound_messages"
            " (wamid text PRIMARY KEY, phone_number_id text NOT NULL, received_at timestamptz NOT NULL)",
            "CREATE INDEX inbound_messages_received ON inbound_messages (received_at)",
            "CREATE TABLE marketing_opt_outs (phone text PRIMARY KEY, since timestamptz NOT NULL)",
            """CREATE TABLE template_states (
                name text NOT NULL,
                language text NOT NULL,
                status text NOT NULL,
                reason text,
                updated_at timestamptz NOT NULL,
                PRIMARY KEY (name, language)
            )""",
            # a contact's number and creation time as columns (written at its INSERT; neither changes
            # after it), for `latest_contact_by_phone`; existing contacts take them from their state
            "ALTER TABLE contacts ADD COLUMN phone text, ADD COLUMN created_at timestamptz",
            "UPDATE contacts SET phone = state::jsonb ->> 'phone',"
            " created_at = (state::jsonb ->> 'created_at')::timestamptz WHERE state::jsonb ->> 'phone' IS NOT NULL",
            # in the read's order (SQLite's NULLs sort last when descending; here they would come first)
            "CREATE INDEX contacts_phone ON contacts"
            " (channel, phone, created_at DESC NULLS LAST, campaign_id DESC, contact_id DESC) WHERE phone IS NOT NULL",
        ),
    ),
    Migration(
        7,
        "lawful calling: what happened to each number over every campaign (attempts, refusals, opt-outs, abandons)",
        (
            "CREATE TABLE number_history"
            " (phone text NOT NULL, at timestamptz NOT NULL, kind text NOT NULL, campaign_id text NOT NULL)",
            # "this number since T": one range scan
            "CREATE INDEX number_history_phone ON number_history (phone, at)",
        ),
    ),
)


def migrate(conn: psycopg.Connection[Any]) -> list[int]:
    """Each missing step in a transaction of its own, under an advisory lock (instances starting
    together apply each step once)."""
    applied: list[int] = []
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, what text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
            steps = pending(MIGRATIONS, row[0] if row else 0, "the PostgreSQL store")
            if steps:
                for statement in steps[0].statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, what) VALUES (%s, %s)", (steps[0].version, steps[0].what)
                )
        conn.commit()
        if not steps:
            return applied
        applied.append(steps[0].version)
