"""Named, run-once storage migrations (append only: never edit a migration that has shipped)."""

from __future__ import annotations

import sqlite3

from gateway.store.sqlite_db import Migration, run_script


def m001_journal(conn: sqlite3.Connection) -> None:
    """Inbound journal: the unique key turns platform retries into no-ops."""
    run_script(
        conn,
        """
        CREATE TABLE inbound (
            id INTEGER PRIMARY KEY,
            platform TEXT NOT NULL,
            bot_id TEXT NOT NULL,
            platform_msg_id TEXT NOT NULL,
            session_key TEXT NOT NULL,
            payload TEXT NOT NULL,
            received_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            done_at REAL,
            UNIQUE (platform, bot_id, platform_msg_id)
        );
        CREATE INDEX inbound_pending ON inbound (id) WHERE status = 'pending';
        """,
    )


def m002_outbox(conn: sqlite3.Connection) -> None:
    """Outbox and dead letters: replies are rows before they are requests."""
    run_script(
        conn,
        """
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            idempotency_key TEXT NOT NULL UNIQUE,
            lane TEXT NOT NULL,
            platform TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            created_at REAL NOT NULL,
            deadline_at REAL NOT NULL,
            last_code TEXT NOT NULL DEFAULT '',
            last_error TEXT NOT NULL DEFAULT '',
            sent_at REAL,
            receipt TEXT NOT NULL DEFAULT ''
        );
        CREATE INDEX outbox_pending ON outbox (lane, id) WHERE status = 'pending';
        CREATE TABLE dead_letters (
            outbox_id INTEGER PRIMARY KEY REFERENCES outbox (id),
            idempotency_key TEXT NOT NULL,
            platform TEXT NOT NULL,
            reason TEXT NOT NULL,
            code TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            died_at REAL NOT NULL
        );
        """,
    )


def m003_sessions(conn: sqlite3.Connection) -> None:
    """Per-session conversation history."""
    run_script(
        conn,
        """
        CREATE TABLE sessions (
            key TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            turns INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE session_messages (
            id INTEGER PRIMARY KEY,
            session_key TEXT NOT NULL REFERENCES sessions (key),
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX session_messages_by_key ON session_messages (session_key, id);
        """,
    )


def m004_health(conn: sqlite3.Connection) -> None:
    """One row rewritten by readiness probes: a real page write, so a full disk shows as not ready."""
    run_script(conn, "CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked_at REAL NOT NULL)")


def m005_adapter_state(conn: sqlite3.Connection) -> None:
    """Small per-adapter facts that must survive a crash (e.g. which card shows a reply being streamed)."""
    run_script(
        conn,
        """
        CREATE TABLE adapter_state (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (namespace, key)
        );
        CREATE INDEX adapter_state_expiry ON adapter_state (expires_at);
        """,
    )


def m006_traces(conn: sqlite3.Connection) -> None:
    """Per-turn traces (what the reflection step learns from) and the audit log of every skill run."""
    run_script(
        conn,
        """
        CREATE TABLE turn_traces (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            session_key TEXT NOT NULL,
            inbound_ids TEXT NOT NULL,
            trace TEXT NOT NULL
        );
        CREATE INDEX turn_traces_at ON turn_traces (at);
        CREATE TABLE skill_runs (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            session_key TEXT NOT NULL,
            user_id TEXT NOT NULL,
            skill TEXT NOT NULL,
            version TEXT NOT NULL,
            args TEXT NOT NULL,
            exit_code INTEGER,
            ok INTEGER NOT NULL,
            duration REAL NOT NULL,
            error TEXT NOT NULL
        );
        CREATE INDEX skill_runs_by_skill ON skill_runs (skill, at);
        """,
    )


def m007_memory(conn: sqlite3.Connection) -> None:
    """Per-user memory notes. `norm` (the dedupe form) is unique per user so a re-saved fact is a no-op;
    AUTOINCREMENT because ids are shown to the model and must never come back as another note's."""
    run_script(
        conn,
        """
        CREATE TABLE user_memory (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_key TEXT NOT NULL,
            text TEXT NOT NULL,
            norm TEXT NOT NULL,
            created_at REAL NOT NULL,
            source TEXT NOT NULL DEFAULT 'remember',
            UNIQUE (user_key, norm)
        );
        CREATE INDEX user_memory_by_user ON user_memory (user_key, id);
        """,
    )


def m008_prune_indexes(conn: sqlite3.Connection) -> None:
    """Housekeeping deletes answered messages and sent replies past retention every 30 s; without these
    indexes each run scanned the whole table on the writer thread (~200 ms at a million rows), and every
    ack waiting for a journal commit waited behind it."""
    run_script(
        conn,
        """
        CREATE INDEX inbound_done_at ON inbound (done_at) WHERE status = 'done';
        CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE status = 'sent';
        """,
    )


MIGRATIONS: list[Migration] = [
    ("001_journal", m001_journal),
    ("002_outbox", m002_outbox),
    ("003_sessions", m003_sessions),
    ("004_health", m004_health),
    ("005_adapter_state", m005_adapter_state),
    ("006_traces", m006_traces),
    ("007_memory", m007_memory),
    ("008_prune_indexes", m008_prune_indexes),
]
