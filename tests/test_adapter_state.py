"""Adapters' durable key-value state: survives a restart, expires, namespaced, pruned by housekeeping."""

from __future__ import annotations

from pathlib import Path

from gateway.host import NamespacedState
from gateway.housekeeping import run_housekeeping
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_journal import SqliteJournal
from gateway.store.sqlite_kv import SqliteKeyValueStore
from gateway.store.sqlite_outbox import SqliteOutbox
from sessions.manager import SessionManager
from sessions.store import SqliteSessionStore


async def test_state_survives_a_reopen_and_is_namespaced(tmp_path: Path) -> None:
    now = [1000.0]
    db = SqliteDatabase(tmp_path / "s.sqlite3")
    await db.open(MIGRATIONS)
    a = NamespacedState(SqliteKeyValueStore(db), "a", clock=lambda: now[0])
    b = NamespacedState(SqliteKeyValueStore(db), "b", clock=lambda: now[0])
    await a.put("card:k1", '{"card_id": "c1"}', ttl=60)
    await a.put("card:k1", '{"card_id": "c2"}', ttl=60)  # replaced, not duplicated
    assert await b.get("card:k1") is None
    await db.close()

    db = SqliteDatabase(tmp_path / "s.sqlite3")
    await db.open(MIGRATIONS)
    try:
        store = SqliteKeyValueStore(db)
        a = NamespacedState(store, "a", clock=lambda: now[0])
        assert await a.get("card:k1") == '{"card_id": "c2"}'
        now[0] += 61
        assert await a.get("card:k1") is None  # expired reads as absent
        sessions = SessionManager(SqliteSessionStore(db))
        report = await run_housekeeping(
            SqliteJournal(db), SqliteOutbox(db), sessions, now=now[0], retention_seconds=3600, state=store
        )
        assert report.state_pruned == 1
        await a.put("x", "1", ttl=10)
        await a.delete("x")
        assert await a.get("x") is None
    finally:
        await db.close()
