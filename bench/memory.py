"""Idle memory per cached session (a figure of bench/ingest.py; split out to keep that file readable)."""

from __future__ import annotations

import gc
import os
import sqlite3
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for _path in (BENCH.parent, BENCH):  # run as a script: make the repo root and the sibling bench modules importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from support import (  # noqa: E402
    BOT,
)


async def session_memory(sessions: int, history: int, workdir: Path) -> dict[str, Any]:
    """tracemalloc bytes held per cached session (SessionManager over the real SqliteSessionStore)."""
    from gateway.messages import SessionKey
    from gateway.store.interfaces import HistoryMessage
    from gateway.store.migrations import MIGRATIONS
    from gateway.store.sqlite_db import SqliteDatabase
    from sessions.manager import SessionManager
    from sessions.store import SqliteSessionStore, append_messages

    def key(i: int) -> SessionKey:
        return SessionKey(platform="webhook", bot_id=BOT, chat_id=f"dm-user-{i}", user_id=f"user-{i}")

    def turn_messages(i: int) -> list[HistoryMessage]:
        out = []
        for t in range(history // 2):
            out.append(HistoryMessage("user", f"Question {t} from user {i}: what is the status of ticket {i * 7 + t}?"))
            out.append(
                HistoryMessage(
                    "assistant",
                    f"Ticket {i * 7 + t} is in review; the last change was merged yesterday and the"
                    f" deployment is scheduled for Thursday (answer {t}).",
                )
            )
        return out

    db = SqliteDatabase(workdir / "memory.sqlite3", synchronous="NORMAL")
    await db.open(MIGRATIONS)
    try:
        now = time.time()
        content_chars = sum(len(m.content) for m in turn_messages(0))

        def write_all(conn: sqlite3.Connection) -> None:
            for i in range(sessions + 1):
                msgs = turn_messages(i)
                for j in range(0, len(msgs), 2):  # one turn = one user + one assistant message
                    append_messages(conn, key(i), msgs[j : j + 2], now)

        await db.write(write_all)
        clock = [0.0]
        manager = SessionManager(
            SqliteSessionStore(db), history_limit=20, idle_seconds=600, max_cached=10 * sessions, clock=lambda: clock[0]
        )
        await manager.load(key(sessions))  # warm the reader thread, its connection and statement cache
        manager.forget(key(sessions))
        gc.collect()
        tracemalloc.start()
        try:
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(sessions):
                await manager.load(key(i))  # a fresh key object, as session_key_for builds per message
            gc.collect()
            loaded = tracemalloc.get_traced_memory()[0]
            cached = len(manager)
            clock[0] += 601
            evicted = manager.evict_idle()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    finally:
        await db.close()
    return {
        "sessions": cached,
        "history_messages_each": history,
        "history_text_chars_each": content_chars,
        "bytes_baseline": base,
        "bytes_loaded": loaded,
        "bytes_per_session": (loaded - base) / sessions,
        "evicted": evicted,
        "bytes_after_evict": after,
        "bytes_retained_after_evict": after - base,
    }


# --------------------------------------------------------------------------- main
