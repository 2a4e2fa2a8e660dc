"""Per-user memory notes on a real SQLite file: dedupe, cap, ownership, trimming, the migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase, apply_migrations
from gateway.store.sqlite_memory import SqliteMemoryStore
from sessions.memory import MAX_NOTE_CHARS, MemoryStore


async def test_add_stores_a_cleaned_note_and_recent_lists_oldest_first(db: SqliteDatabase) -> None:
    store: MemoryStore = SqliteMemoryStore(db)
    first = await store.add("alice", "  likes\n\ttea  ", now=10.0)
    second = await store.add("alice", "works in Berlin", now=20.0)
    assert first is not None and second is not None
    assert first.text == "likes tea" and first.user_key == "alice" and first.source == "remember"
    assert second.id > first.id
    assert [n.text for n in await store.recent("alice", 10)] == ["likes tea", "works in Berlin"]
    assert [n.text for n in await store.recent("alice", 1)] == ["works in Berlin"]  # the newest
    assert [n.created_at for n in await store.recent("alice", 10)] == [10.0, 20.0]
    assert await store.recent("bob", 10) == []


async def test_the_same_note_again_is_a_no_op_but_another_user_may_have_it(db: SqliteDatabase) -> None:
    store = SqliteMemoryStore(db)
    assert await store.add("alice", "Prefers Chinese", now=1.0) is not None
    assert await store.add("alice", "  prefers   CHINESE ", now=2.0) is None
    assert await store.count("alice") == 1
    assert (await store.recent("alice", 5))[0].created_at == 1.0  # the original stays untouched
    assert await store.add("bob", "prefers chinese", now=3.0) is not None
    assert await store.count("bob") == 1


async def test_past_the_cap_the_oldest_notes_are_evicted(db: SqliteDatabase) -> None:
    store = SqliteMemoryStore(db, max_notes=3)
    added = [await store.add("alice", f"fact {i}", now=float(i)) for i in range(5)]
    await store.add("bob", "bob's fact", now=9.0)
    assert [n.text for n in await store.recent("alice", 10)] == ["fact 2", "fact 3", "fact 4"]
    assert await store.count("alice") == 3 and await store.count("bob") == 1  # only the adder's notes go
    evicted = added[0]
    assert evicted is not None and not await store.forget("alice", evicted.id)
    assert await store.add("alice", "fact 0", now=10.0) is not None  # evicted, so no longer a duplicate


async def test_a_user_can_only_forget_their_own_notes(db: SqliteDatabase) -> None:
    store = SqliteMemoryStore(db)
    note = await store.add("alice", "secret project codename", now=1.0)
    assert note is not None
    assert not await store.forget("mallory", note.id)
    assert await store.count("alice") == 1
    assert await store.forget("alice", note.id)
    assert not await store.forget("alice", note.id)
    assert await store.count("alice") == 0
    assert not await store.forget("alice", 999_999)


async def test_long_notes_are_trimmed_and_empty_ones_refused(db: SqliteDatabase) -> None:
    store = SqliteMemoryStore(db)
    note = await store.add("alice", "x" * 600 + " tail", now=1.0)
    assert note is not None and len(note.text) == MAX_NOTE_CHARS == 500
    assert len((await store.recent("alice", 1))[0].text) == 500
    with pytest.raises(ValueError, match="empty"):
        await store.add("alice", " \n\t ", now=2.0)
    assert await store.count("alice") == 1


async def test_forgotten_ids_are_never_reused(db: SqliteDatabase) -> None:
    store = SqliteMemoryStore(db)
    newest = await store.add("alice", "a", now=1.0)
    assert newest is not None and await store.forget("alice", newest.id)
    again = await store.add("alice", "b", now=2.0)
    assert again is not None and again.id > newest.id  # an old id the model saw cannot delete a new note


async def test_notes_survive_a_restart_and_the_migration_runs_once(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    db = SqliteDatabase(path)
    await db.open(MIGRATIONS)
    try:
        await SqliteMemoryStore(db).add("alice", "likes tea", now=1.0)
    finally:
        await db.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert apply_migrations(conn, MIGRATIONS) == []  # 007_memory already applied
        names = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
        assert "007_memory" in names
        index = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'user_memory_by_user'").fetchone()
        assert index is not None and "(user_key, id)" in index[0]
    finally:
        conn.close()
    reopened = SqliteDatabase(path)
    await reopened.open(MIGRATIONS)
    try:
        assert [n.text for n in await SqliteMemoryStore(reopened).recent("alice", 5)] == ["likes tea"]
    finally:
        await reopened.close()
