"""SQLite storage of per-user memory notes (sessions.memory.MemoryStore)."""

from __future__ import annotations

import logging
import sqlite3

from gateway.store.note_vectors import NoteVectors
from gateway.store.sqlite_db import SqliteDatabase
from sessions.memory import MAX_NOTE_CHARS, MAX_NOTES_PER_USER, MemoryNote, clean_note, dedupe_key

_COLUMNS = "id, user_key, text, created_at, source"
log = logging.getLogger(__name__)


def _note(row: tuple[int, str, str, float, str]) -> MemoryNote:
    return MemoryNote(id=int(row[0]), user_key=row[1], text=row[2], created_at=float(row[3]), source=row[4])


class SqliteMemoryStore:
    """Dedupe is a unique key and eviction runs in the insert's transaction, so concurrent turns of
    one user can neither store a note twice nor overshoot the cap."""

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        vectors: NoteVectors | None = None,
        max_notes: int = MAX_NOTES_PER_USER,
        max_chars: int = MAX_NOTE_CHARS,
    ) -> None:
        self._db = db
        self._vectors = vectors  # None: recall is by recency only
        self._max_notes = max_notes
        self._max_chars = max_chars

    async def add(self, user_key: str, text: str, *, now: float, source: str = "remember") -> MemoryNote | None:
        cleaned = clean_note(text, self._max_chars)
        if not cleaned:
            raise ValueError("a note cannot be empty")
        cap = self._max_notes

        def op(conn: sqlite3.Connection) -> tuple[MemoryNote | None, list[int]]:
            cur = conn.execute(
                "INSERT INTO user_memory (user_key, text, norm, created_at, source) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (user_key, norm) DO NOTHING",
                (user_key, cleaned, dedupe_key(cleaned), now, source),
            )
            if cur.rowcount == 0 or cur.lastrowid is None:
                return None, []
            note = MemoryNote(id=cur.lastrowid, user_key=user_key, text=cleaned, created_at=now, source=source)
            evicted = conn.execute(
                "DELETE FROM user_memory WHERE user_key = ? AND id NOT IN"
                " (SELECT id FROM user_memory WHERE user_key = ? ORDER BY id DESC LIMIT ?) RETURNING id",
                (user_key, user_key, cap),
            ).fetchall()
            return note, [int(r[0]) for r in evicted]

        note, evicted = await self._db.write(op)
        if note is not None and self._vectors is not None:
            await self._sync_vectors(user_key, [(note.id, note.text)], evicted)
        return note

    async def _sync_vectors(self, user_key: str, added: list[tuple[int, str]], dropped: list[int]) -> None:
        """The note is committed either way: an index that could not follow is caught up by `reconcile_vectors`."""
        assert self._vectors is not None
        try:
            await self._vectors.drop(dropped)
            await self._vectors.put(user_key, added)
        except Exception:
            log.warning("memory recall index not updated; the next start reconciles it", exc_info=True)

    async def relevant(self, user_key: str, query: str, limit: int) -> list[MemoryNote]:
        """The user's notes closest in meaning to `query`, closest first ([] without a vector index)."""
        if self._vectors is None or limit <= 0:
            return []
        ids = await self._vectors.nearest(user_key, query, limit)
        if not ids:
            return []

        def op(conn: sqlite3.Connection) -> list[MemoryNote]:
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM user_memory WHERE user_key = ? AND id IN ({marks})", (user_key, *ids)
            ).fetchall()
            return [_note(r) for r in rows]

        # The user filter is checked again here: the index is derived data and may hold stale ids
        # (a note deleted while the index was being rebuilt); those are dropped so they stop taking slots.
        found = {n.id: n for n in await self._db.read(op)}
        if stale := [i for i in ids if i not in found]:
            await self._sync_vectors(user_key, [], stale)
        return [found[i] for i in ids if i in found]

    async def reconcile_vectors(self) -> tuple[int, int]:
        """Bring the vector index in line with the stored notes (a start-up job); (indexed, dropped)."""
        if self._vectors is None:
            return 0, 0

        def op(conn: sqlite3.Connection) -> list[tuple[int, str, str]]:
            return [(int(i), u, t) for i, u, t in conn.execute("SELECT id, user_key, text FROM user_memory")]

        async def notes() -> list[tuple[int, str, str]]:
            return await self._db.read(op)

        return await self._vectors.reconcile(notes)

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

        gone: bool = await self._db.write(op)
        if gone and self._vectors is not None:
            await self._sync_vectors(user_key, [], [note_id])
        return gone

    async def count(self, user_key: str) -> int:
        def op(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COUNT(*) FROM user_memory WHERE user_key = ?", (user_key,)).fetchone()
            return int(row[0])

        return await self._db.read(op)
