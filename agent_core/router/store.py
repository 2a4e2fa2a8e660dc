"""The router's SQLite file: skills, their vectors, learned examples and the FTS5 index, in one transaction scope.

Why SQLite holds the vectors (float32 blobs) even though routing reads an in-memory numpy matrix: the matrix is
rebuilt from these rows on open, so a restart never re-embeds an unchanged library, and an embedder change is
detected per row (`embedder` column). sqlite-vec was measured slower than numpy brute force at these sizes
(routing.md: 3.6 ms vs 0.3 ms at 10k x 256), so it is not used for skills; it stays the tool for partitioned memory.

Uses `pysqlite3` (bundled SQLite 3.51 with FTS5) when available, else the stdlib driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import bm25

try:  # pragma: no cover - depends on the platform wheel
    import pysqlite3.dbapi2 as sqlite3
except ImportError:  # pragma: no cover
    import sqlite3

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS skills (
        id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, description TEXT NOT NULL, tags TEXT NOT NULL,
        embedder TEXT, vector BLOB, utility REAL NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS examples (
        id INTEGER PRIMARY KEY, skill_id INTEGER NOT NULL REFERENCES skills(id) ON DELETE CASCADE,
        query TEXT NOT NULL, embedder TEXT, vector BLOB)""",
    "CREATE INDEX IF NOT EXISTS examples_by_skill ON examples(skill_id, id)",
    bm25.SCHEMA,
)


@dataclass(frozen=True)
class SkillRow:
    """One stored skill."""

    id: int
    name: str
    description: str
    tags: tuple[str, ...]
    embedder: str | None
    vector: npt.NDArray[np.float32] | None
    utility: float


@dataclass(frozen=True)
class ExampleRow:
    """One learned (query, skill) success."""

    id: int
    skill_id: int
    query: str
    embedder: str | None
    vector: npt.NDArray[np.float32] | None


def blob(vector: npt.NDArray[np.float32] | None) -> bytes | None:
    """float32 little-endian bytes (the layout sqlite-vec also reads)."""
    return None if vector is None else np.asarray(vector, dtype="<f4").tobytes()


def unblob(data: bytes | None) -> npt.NDArray[np.float32] | None:
    """Inverse of `blob`."""
    return None if data is None else np.frombuffer(data, dtype="<f4").astype(np.float32)


def connect(path: Path | str) -> Any:
    """Open (creating) the router database. `check_same_thread=False`: the router serialises use with its lock."""
    conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    if str(path) != ":memory:":
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a lost routing row is re-upserted from the skill library
    conn.execute("PRAGMA foreign_keys=ON")
    for statement in SCHEMA:
        conn.execute(statement)
    return conn


def skills(conn: Any) -> Iterator[SkillRow]:
    """Every stored skill."""
    for row in conn.execute("SELECT id, name, description, tags, embedder, vector, utility FROM skills"):
        tags = tuple(t for t in row[3].split("\n") if t)
        yield SkillRow(row[0], row[1], row[2], tags, row[4], unblob(row[5]), float(row[6]))


def examples(conn: Any, skill_id: int | None = None) -> Iterator[ExampleRow]:
    """Learned examples, oldest first (of one skill, or all)."""
    sql = "SELECT id, skill_id, query, embedder, vector FROM examples"
    args: tuple[int, ...] = ()
    if skill_id is not None:
        sql, args = sql + " WHERE skill_id = ?", (skill_id,)
    for row in conn.execute(sql + " ORDER BY id", args):
        yield ExampleRow(row[0], row[1], row[2], row[3], unblob(row[4]))


def save_skill(conn: Any, name: str, description: str, tags: tuple[str, ...], embedder: str | None, vector: Any) -> int:
    """Insert or update by name, keeping the id (and so the learned examples); returns the id."""
    row = conn.execute(
        """INSERT INTO skills(name, description, tags, embedder, vector) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT(name) DO UPDATE SET description = excluded.description, tags = excluded.tags,
           embedder = excluded.embedder, vector = excluded.vector RETURNING id""",
        (name, description, "\n".join(tags), embedder, blob(vector)),
    ).fetchone()
    return int(row[0])


def save_vector(conn: Any, table: str, rowid: int, embedder: str, vector: npt.NDArray[np.float32]) -> None:
    """Store a (re)computed vector for a skill or an example."""
    assert table in ("skills", "examples")
    conn.execute(f"UPDATE {table} SET embedder = ?, vector = ? WHERE id = ?", (embedder, blob(vector), rowid))


def add_example(conn: Any, skill_id: int, query: str, embedder: str | None, vector: Any, keep: int) -> int:
    """Record a success; only the newest `keep` examples of a skill are kept. Returns how many old ones went."""
    conn.execute(
        "INSERT INTO examples(skill_id, query, embedder, vector) VALUES (?, ?, ?, ?)",
        (skill_id, query, embedder, blob(vector)),
    )
    return int(
        conn.execute(
            """DELETE FROM examples WHERE skill_id = ? AND id NOT IN
           (SELECT id FROM examples WHERE skill_id = ? ORDER BY id DESC LIMIT ?)""",
            (skill_id, skill_id, keep),
        ).rowcount
    )


def delete_skill(conn: Any, skill_id: int) -> None:
    """Remove a skill, its examples (cascade) and its index terms."""
    conn.execute("DELETE FROM skills WHERE id = ?", (skill_id,))
    bm25.delete(conn, skill_id)
