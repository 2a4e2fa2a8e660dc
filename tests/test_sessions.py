"""SessionManager: load under lock semantics, history window, idle eviction, size cap."""

from __future__ import annotations

from pathlib import Path

from gateway.messages import SessionKey
from gateway.store.interfaces import HistoryMessage
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from sessions.manager import SessionManager
from sessions.store import SqliteSessionStore, append_messages


def key(user: str) -> SessionKey:
    return SessionKey(platform="t", bot_id="b", chat_id="", user_id=user)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_load_reads_store_once_then_mirrors_commits(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "s.sqlite3")
    await db.open(MIGRATIONS)
    try:
        msgs = [HistoryMessage("user", f"q{i}") for i in range(5)]
        await db.write(lambda c: append_messages(c, key("a"), msgs, 1.0))
        manager = SessionManager(SqliteSessionStore(db), history_limit=4)
        state = await manager.load(key("a"))
        assert [m.content for m in state.history] == ["q1", "q2", "q3", "q4"]
        manager.record(key("a"), [HistoryMessage("user", "q5"), HistoryMessage("assistant", "a5")])
        again = await manager.load(key("a"))
        assert again is state
        assert [m.content for m in again.history] == ["q3", "q4", "q5", "a5"]
        assert (await manager.load(key("b"))).history == []
    finally:
        await db.close()


async def test_idle_sessions_are_evicted_and_reloaded(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "s.sqlite3")
    await db.open(MIGRATIONS)
    clock = Clock()
    try:
        manager = SessionManager(SqliteSessionStore(db), idle_seconds=60, clock=clock)
        await manager.load(key("a"))
        clock.now += 30
        await manager.load(key("b"))
        clock.now += 45
        assert manager.evict_idle() == 1
        assert len(manager) == 1
        await db.write(lambda c: append_messages(c, key("a"), [HistoryMessage("user", "later")], 2.0))
        reloaded = await manager.load(key("a"))
        assert [m.content for m in reloaded.history] == ["later"], "an evicted session is read fresh"
    finally:
        await db.close()


async def test_cache_is_capped_least_recently_used_first(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "s.sqlite3")
    await db.open(MIGRATIONS)
    try:
        manager = SessionManager(SqliteSessionStore(db), max_cached=3)
        for user in "abcd":
            await manager.load(key(user))
        await manager.load(key("b"))
        await manager.load(key("e"))
        assert len(manager) == 3
        manager.forget(key("e"))
        assert len(manager) == 2
    finally:
        await db.close()
