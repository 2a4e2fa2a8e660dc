"""Semantic recall of a user's memory notes: one sqlite-vec index partitioned by user.

Notes themselves live in the main database (sessions.memory.MemoryStore); this file holds only
their vectors, which are derived data: losing or corrupting it costs recall quality, never a note,
and `reconcile` rebuilds it from the notes. It is a separate file because the main database runs on
the stdlib `sqlite3`, which on many Pythons cannot load extensions; here pysqlite3 loads sqlite-vec.

Why sqlite-vec here and numpy for skill routing: routing scores every skill on every query, which a
dense matrix does best, while recall is a top-k inside one user's partition of a table that grows
with every user (`user_key` is a vec0 partition key, so a query never even reads another user's
vectors): bench/memory_recall.py measures it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


class TextEmbedder(Protocol):
    """agent_core.router.Embedder, as far as recall needs it."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> F32: ...


class VectorsUnavailable(Exception):
    """sqlite-vec cannot be loaded on this Python: memory falls back to recency only."""


def _connect(path: Path) -> Any:
    try:
        import sqlite_vec
    except ImportError as exc:
        raise VectorsUnavailable(f"sqlite-vec is not installed: {exc}") from exc
    try:
        import pysqlite3.dbapi2 as driver
    except ImportError:  # the stdlib driver, which can load extensions on some builds
        import sqlite3 as driver
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = driver.connect(str(path), isolation_level=None, check_same_thread=False)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
    except Exception as exc:  # AttributeError where the driver was built without extension loading
        conn.close()
        raise VectorsUnavailable(f"sqlite-vec does not load via {driver.__name__}: {exc}") from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
    except Exception:  # e.g. "file is not a database": the caller may set the file aside and retry
        conn.close()
        raise
    return conn


def _prepare(conn: Any, embedder: TextEmbedder) -> None:
    """Create the table; vectors of another model (or size) are dropped, and `reconcile` re-embeds the notes."""
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
    model = f"{embedder.name}/{embedder.dim}"
    if row is not None and row[0] != model:
        conn.execute("DROP TABLE IF EXISTS note_vectors")
    conn.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS note_vectors USING vec0("
        f"note_id INTEGER PRIMARY KEY, user_key TEXT PARTITION KEY, embedding float[{embedder.dim}]"
        " distance_metric=cosine)"
    )
    conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('embedder', ?)", (model,))


def _unit(rows: F32) -> F32:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: F32 = (rows / np.maximum(norms, 1e-9)).astype(np.float32)
    return out


class NoteVectors:
    """Vectors of memory notes, searched per user. Every method is async and runs its SQL off the loop."""

    def __init__(self, conn: Any, embedder: TextEmbedder) -> None:
        self._conn = conn
        self._embedder = embedder
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        # Until the model is loaded, recall answers [] rather than make a turn wait for the load.
        self.ready = False

    async def warm_up(self) -> None:
        """Load the embedding model off the loop; recall starts answering once it is in."""
        await asyncio.to_thread(self._embedder.embed, ["warm up"])
        self.ready = True

    @classmethod
    async def open(cls, path: Path, embedder: TextEmbedder) -> NoteVectors:
        """Open (creating) the index; VectorsUnavailable when sqlite-vec cannot run here."""

        def build() -> Any:
            conn = _connect(path)
            try:
                _prepare(conn, embedder)
            except BaseException:
                conn.close()
                raise
            return conn

        return cls(await asyncio.to_thread(build), embedder)

    async def put(self, user_key: str, notes: Sequence[tuple[int, str]]) -> None:
        """Index (note id, text) pairs of one user; an id already indexed is replaced."""
        if not notes:
            return

        def op() -> None:
            vectors = _unit(np.asarray(self._embedder.embed([text for _, text in notes]), np.float32))
            with self._lock:
                self._conn.execute("BEGIN")
                try:
                    for (note_id, _), vec in zip(notes, vectors, strict=True):
                        self._conn.execute("DELETE FROM note_vectors WHERE note_id = ?", (note_id,))
                        self._conn.execute(
                            "INSERT INTO note_vectors (note_id, user_key, embedding) VALUES (?, ?, ?)",
                            (note_id, user_key, vec.tobytes()),
                        )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise

        await asyncio.to_thread(op)

    async def drop(self, note_ids: Iterable[int]) -> None:
        """Forget these notes' vectors (unknown ids are ignored)."""
        ids = [(i,) for i in note_ids]
        if not ids:
            return

        def op() -> None:
            with self._lock:
                self._conn.executemany("DELETE FROM note_vectors WHERE note_id = ?", ids)

        await asyncio.to_thread(op)

    async def nearest(self, user_key: str, query: str, k: int) -> list[int]:
        """Ids of the user's `k` notes closest in meaning to `query`, closest first ([] until `warm_up`)."""
        if k <= 0 or not query.strip() or not self.ready:
            return []

        def op() -> list[int]:
            vec = _unit(np.asarray(self._embedder.embed([query]), np.float32))[0]
            with self._lock:
                rows = self._conn.execute(
                    "SELECT note_id FROM note_vectors WHERE embedding MATCH ? AND k = ? AND user_key = ?"
                    " ORDER BY distance",
                    (vec.tobytes(), k, user_key),
                ).fetchall()
            return [int(r[0]) for r in rows]

        return await asyncio.to_thread(op)

    async def reconcile(self, load_notes: Callable[[], Awaitable[Sequence[tuple[int, str, str]]]]) -> tuple[int, int]:
        """Make the index hold exactly the notes (id, user_key, text) `load_notes` returns: (indexed, dropped).

        Catches up after a crash between a note's commit and its vector, notes written before this
        index existed, an index file that was deleted or replaced, and vectors filed under the wrong
        user. The index is read before the notes, so a note added meanwhile is never taken for stale.
        """

        def indexed() -> dict[int, str]:
            with self._lock:
                rows = self._conn.execute("SELECT note_id, user_key FROM note_vectors").fetchall()
            return {int(r[0]): str(r[1]) for r in rows}

        have = await asyncio.to_thread(indexed)
        notes = await load_notes()
        owner = {n[0]: n[1] for n in notes}
        stale = [i for i, user in have.items() if owner.get(i) != user]  # deleted, or filed under the wrong user
        await self.drop(stale)
        missing: dict[str, list[tuple[int, str]]] = {}
        for note_id, user_key, text in notes:
            if have.get(note_id) != user_key:
                missing.setdefault(user_key, []).append((note_id, text))
        for user_key, items in missing.items():
            await self.put(user_key, items)
        return sum(len(v) for v in missing.values()), len(stale)

    async def close(self) -> None:
        """Close the file."""

        def op() -> None:
            with self._lock:
                self._conn.close()

        await asyncio.to_thread(op)
