"""SQLite storage of per-user memory notes (sessions.memory.MemoryStore)."""

from __future__ import annotations

import sqlite3

from gateway.store.sqlite_db import SqliteDatabase
from sessions.memory import MAX_NOTE_CHARS, MAX_NOTES_PER_USER, MemoryNote, clean_note, dedupe_key

_COLUMNS = "id, user_key, text, created_at, source"


def _note(row: tuple[int, str, str, float, str]) -> MemoryNote:
    return MemoryNote(id=int(row[0]), user_key=row[1], text=row[2], created_at=float(row[3]), source=row[4])


class SqliteMemoryStore:
    """Dedupe is a unique key and eviction runs in the insert's transaction, so concurrent turns of
    one user can neither store a note twice nor overshoot the cap."""

    def __init__(
        self, db: SqliteDatabase, *, max_notes: int = MAX_NOTES_PER_USER, max_chars: int = MAX_NOTE_CHARS
    ) -> None:
        self._db = db
        self._max_notes = max_notes
        self._max_chars = max_chars

    async def add(self, user_key: str, text: str, *, now: float, source: str = "remember") -> MemoryNote | None:
        cleaned = clean_note(text, self._max_chars)
        if not cleaned:
            raise ValueError("a note cannot be empty")
        cap = self._max_notes

        def op(conn: sqlite3.Connection) -> MemoryNote | None:
            cur = conn.execute(
                "INSERT INTO user_memory (user_key, text, norm, created_at, source) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_key, norm) DO NOTHING",
                (user_key, cleaned, dedupe_key(cleaned), now, source),
            )
            if cur.rowcount == 0 or cur.lastrowid is None:
                return None
            conn.execute(
                "DELETE FROM user_memory WHERE user_key = ? AND id NOT IN"
                " (SELECT id FROM user_memory WHERE user_key = ? ORDER BY id DESC LIMIT ?)",
                (user_key, user_key, cap),
            )
            return MemoryNote(id=cur.lastrowid, user_key=user_key, text=cleaned, created_at=now, source=source)

        return await self._db.write(op)

    async def recent(self, user_key: str, limit: int) -> list[MemoryNote]:
        def op(conn: sqlite3.Connection) -> list[MemoryNote]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM user_memory WHERE user_key = ? ORDER BY id DESC LIMIT ?",
                (user_key, max(0, limit)),
            ).fetchall()
            return [_note(r) for r in reversed(rows)]

        return await self._db.read(op)

    async def forget(self, user_key: str, note_id: int) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM user_memory WHERE id = ? AND user_key = ?", (note_id, user_key))
            return cur.rowcount > 0

        return await self._db.write(op)

    async def count(self, user_key: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COUNT(*) FROM user_memory WHERE user_key = ?", (user_key,)).fetchone()
            return int(row[0])

        return await self._db.read(op)
