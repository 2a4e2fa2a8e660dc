"""Per-user memory as the running service sets it up: notes in the main database, recall by meaning
through a sqlite-vec index next to it when this Python can load sqlite-vec, by recency otherwise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway.store.note_vectors import NoteVectors, TextEmbedder, VectorsUnavailable
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_memory import SqliteMemoryStore

log = logging.getLogger(__name__)
VECTORS_FILE = "memory_vectors.sqlite3"


class MemoryRuntime:
    """The memory store plus the index it keeps; `close` releases the index file."""

    def __init__(self, store: SqliteMemoryStore, vectors: NoteVectors | None) -> None:
        self.store = store
        self.vectors = vectors

    async def close(self) -> None:
        """Close the index (the notes' database belongs to the runtime)."""
        if self.vectors is not None:
            await self.vectors.close()
            self.vectors = None


async def open_memory(
    db: SqliteDatabase,
    data_dir: Path,
    embedder: TextEmbedder,
    spawn: Callable[[Coroutine[Any, Any, None], str], object],
) -> MemoryRuntime:
    """The store; the index is reconciled with the notes in the background (it is derived data)."""
    vectors = await _open_vectors(data_dir / VECTORS_FILE, embedder)
    store = SqliteMemoryStore(db, vectors=vectors)
    if vectors is not None:
        spawn(_prepare(store, vectors), "memory-vectors")
    return MemoryRuntime(store, vectors)


async def _open_vectors(path: Path, embedder: TextEmbedder) -> NoteVectors | None:
    """The index, recreated once if its file is unreadable (it is derived data); None when it cannot run here."""
    for attempt in (1, 2):
        try:
            return await NoteVectors.open(path, embedder)
        except VectorsUnavailable as exc:
            log.warning("memory recall by meaning is off, notes are recalled by recency only: %s", exc)
            return None
        except Exception as exc:
            if attempt == 2:
                log.exception("memory recall index unusable; notes are recalled by recency only")
                return None
            aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            log.warning("memory recall index %s is unreadable (%s); moved to %s and rebuilt", path, exc, aside)
            await asyncio.to_thread(_move_aside, path, aside)
    return None


def _move_aside(path: Path, aside: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(f"{aside}{suffix}")


async def _prepare(store: SqliteMemoryStore, vectors: NoteVectors) -> None:
    """Load the model (shared with skill routing), then catch the index up with the notes."""
    try:
        await vectors.warm_up()
        indexed, dropped = await store.reconcile_vectors()
    except Exception:  # recall degrades for notes without vectors; the service is unaffected
        log.exception("could not reconcile the memory recall index")
        return
    if indexed or dropped:
        log.info("memory recall index caught up: %d notes indexed, %d stale vectors dropped", indexed, dropped)
