"""SQLite implementation of per-session conversation history."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from gateway.messages import SessionKey
from gateway.store.interfaces import HistoryMessage
from gateway.store.sqlite_db import SqliteDatabase


def session_id(key: SessionKey) -> str:
    """Stable text form of a session key for storage."""
    return key.model_dump_json()


def append_messages(conn: sqlite3.Connection, key: SessionKey, messages: Sequence[HistoryMessage], now: float) -> None:
    """Append a turn's messages and bump the session's counters (inside a write transaction)."""
    sid = session_id(key)
    conn.execute(
        "INSERT INTO sessions (key, created_at, updated_at, turns) VALUES (?, ?, ?, 1)"
        " ON CONFLICT (key) DO UPDATE SET updated_at = excluded.updated_at, turns = turns + 1",
        (sid, now, now),
    )
    conn.executemany(
        "INSERT INTO session_messages (session_key, role, content, created_at) VALUES (?, ?, ?, ?)",
        [(sid, m.role, m.content, now) for m in messages],
    )


class SqliteSessionStore:
    """Reads a session's recent history."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def history(self, key: SessionKey, limit: int) -> list[HistoryMessage]:
        """The last `limit` messages of the session, oldest first."""
        sid = session_id(key)

        def op(conn: sqlite3.Connection) -> list[HistoryMessage]:
            rows = conn.execute(
                "SELECT role, content FROM session_messages WHERE session_key = ? ORDER BY id DESC LIMIT ?",
                (sid, limit),
            ).fetchall()
            return [HistoryMessage(role=r[0], content=r[1]) for r in reversed(rows)]

        return await self._db.read(op)

    async def info(self, key: SessionKey) -> tuple[float, float, int] | None:
        """(created_at, updated_at, turns) of a session, or None if it never had a turn."""
        sid = session_id(key)

        def op(conn: sqlite3.Connection) -> tuple[float, float, int] | None:
            row = conn.execute("SELECT created_at, updated_at, turns FROM sessions WHERE key = ?", (sid,)).fetchone()
            return None if row is None else (float(row[0]), float(row[1]), int(row[2]))

        return await self._db.read(op)
