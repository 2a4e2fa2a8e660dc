"""The library's SQLite index: versions, the active pointer, and an append-only event log.

The folders under `versions/` are the content; this file only says which versions exist and which
one is live. Its own database (not the gateway's) keeps agent_core free of the gateway and lets the
`switchboard skills` CLI change the library while the service runs (SQLite serializes the writers).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent_core.skills.model import SkillMeta

Migration = tuple[str, Callable[[sqlite3.Connection], None]]


def _m001_versions(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE versions (
            name TEXT NOT NULL,
            content_hash TEXT NOT NULL,
            seq INTEGER NOT NULL,
            version TEXT NOT NULL,
            author TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            meta_json TEXT NOT NULL,
            PRIMARY KEY (name, content_hash),
            UNIQUE (name, seq),
            UNIQUE (name, version)
        )"""
    )
    conn.execute(
        """
        CREATE TABLE active (
            name TEXT PRIMARY KEY,
            content_hash TEXT NOT NULL,
            activated_at REAL NOT NULL,
            FOREIGN KEY (name, content_hash) REFERENCES versions (name, content_hash)
        )"""
    )
    conn.execute(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            action TEXT NOT NULL,
            content_hash TEXT,
            author TEXT NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        )"""
    )


# Append only: never edit a migration that has shipped.
MIGRATIONS: list[Migration] = [("001_versions", _m001_versions)]


@dataclass(frozen=True)
class VersionInfo:
    """One stored version of a skill, as `history` reports it."""

    name: str
    version: str
    content_hash: str
    seq: int
    author: str
    reason: str
    created_at: float
    active: bool


def meta_to_json(meta: SkillMeta) -> str:
    """SkillMeta as JSON (values YAML parsed as dates etc. become strings)."""
    return json.dumps(asdict(meta), ensure_ascii=False, sort_keys=True, default=str)


def meta_from_json(text: str) -> SkillMeta:
    """Inverse of meta_to_json."""
    data: dict[str, Any] = json.loads(text)
    for key in ("tags", "permissions", "audience", "requirements"):
        data[key] = tuple(data.get(key) or ())
    return SkillMeta(**data)


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are opened explicitly), WAL for concurrent readers."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT: takes the write lock up front so two writers never deadlock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> None:
    """Apply pending migrations, each in its own transaction (idempotent, safe with concurrent openers)."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    for name, step in MIGRATIONS:
        with transaction(conn):
            if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone():
                continue
            step(conn)
            conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))


_VERSION_COLUMNS = "v.name, v.version, v.content_hash, v.seq, v.author, v.reason, v.created_at"


def _info(row: tuple[Any, ...], active_hash: str | None) -> VersionInfo:
    name, version, digest, seq, author, reason, created_at = row[:7]
    return VersionInfo(
        name=str(name),
        version=str(version),
        content_hash=str(digest),
        seq=int(seq),
        author=str(author),
        reason=str(reason),
        created_at=float(created_at),
        active=digest == active_hash,
    )


def active_row(conn: sqlite3.Connection, name: str) -> tuple[str, str] | None:
    """(content_hash, meta_json) of the active version, read in one statement (a consistent pair)."""
    row = conn.execute(
        "SELECT v.content_hash, v.meta_json FROM active a JOIN versions v USING (name, content_hash) WHERE a.name = ?",
        (name,),
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def active_metas(conn: sqlite3.Connection) -> list[SkillMeta]:
    """Metadata of every active skill, by name."""
    rows = conn.execute(
        "SELECT v.meta_json FROM active a JOIN versions v USING (name, content_hash) ORDER BY a.name"
    ).fetchall()
    return [meta_from_json(r[0]) for r in rows]


def history(conn: sqlite3.Connection, name: str) -> list[VersionInfo]:
    """Every version of `name`, oldest first."""
    current = conn.execute("SELECT content_hash FROM active WHERE name = ?", (name,)).fetchone()
    rows = conn.execute(f"SELECT {_VERSION_COLUMNS} FROM versions v WHERE v.name = ? ORDER BY v.seq", (name,))
    return [_info(r, current[0] if current else None) for r in rows.fetchall()]


def find_version(conn: sqlite3.Connection, name: str, ref: str) -> list[tuple[str, str]]:
    """(content_hash, meta_json) of versions whose label equals `ref` or whose hash starts with it."""
    rows = conn.execute(
        "SELECT content_hash, meta_json FROM versions WHERE name = ? AND (version = ? OR "
        "(length(?) >= 6 AND substr(content_hash, 1, length(?)) = ?)) ORDER BY seq",
        (name, ref, ref, ref, ref),
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def add_version(conn: sqlite3.Connection, meta: SkillMeta, digest: str, author: str, reason: str) -> str:
    """Record a new version and return its label (meta.version, suffixed if that label is taken)."""
    label = meta.version
    if conn.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (meta.name, label)).fetchone():
        label = f"{meta.version}+{digest[:8]}"
    (seq,) = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM versions WHERE name = ?", (meta.name,)).fetchone()
    conn.execute(
        "INSERT INTO versions (name, content_hash, seq, version, author, reason, created_at, meta_json)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (meta.name, digest, seq, label, author, reason, time.time(), meta_to_json(meta)),
    )
    return label


def set_active(conn: sqlite3.Connection, name: str, digest: str | None) -> None:
    """Point `name` at a version, or deactivate it (None)."""
    if digest is None:
        conn.execute("DELETE FROM active WHERE name = ?", (name,))
        return
    conn.execute(
        "INSERT INTO active (name, content_hash, activated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET content_hash = excluded.content_hash, activated_at = excluded.activated_at",
        (name, digest, time.time()),
    )


def log_event(conn: sqlite3.Connection, name: str, action: str, digest: str | None, author: str, reason: str) -> int:
    """Append to the audit log; the row id doubles as the library's revision number."""
    cur = conn.execute(
        "INSERT INTO events (name, action, content_hash, author, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
        (name, action, digest, author, reason, time.time()),
    )
    return int(cur.lastrowid or 0)


def revision(conn: sqlite3.Connection) -> int:
    """Increases with every change, including changes made by another process (the CLI)."""
    (value,) = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    return int(value)


def known_names(conn: sqlite3.Connection) -> set[str]:
    """Every skill that has ever been installed, active or not."""
    return {str(r[0]) for r in conn.execute("SELECT DISTINCT name FROM versions").fetchall()}
