"""SQLite implementation of the adapters' durable key-value state."""

from __future__ import annotations

import sqlite3

from gateway.store.sqlite_db import SqliteDatabase


class SqliteKeyValueStore:
    """Rows in `adapter_state`; expired rows read as absent and are pruned by housekeeping."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def get(self, namespace: str, key: str, now: float) -> str | None:
        """The value, unless missing or expired."""

        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT value FROM adapter_state WHERE namespace = ? AND key = ? AND expires_at > ?",
                (namespace, key, now),
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._db.read(op)

    async def put(self, namespace: str, key: str, value: str, *, expires_at: float) -> None:
        """Insert or replace, committed before returning."""
        await self._db.write(
            lambda conn: conn.execute(
                "INSERT INTO adapter_state (namespace, key, value, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                (namespace, key, value, expires_at),
            )
        )

    async def delete(self, namespace: str, key: str) -> None:
        """Forget a value."""
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM adapter_state WHERE namespace = ? AND key = ?", (namespace, key))
        )

    async def prune(self, now: float) -> int:
        """Drop expired rows."""
        return await self._db.write(
            lambda conn: conn.execute("DELETE FROM adapter_state WHERE expires_at <= ?", (now,)).rowcount
        )
