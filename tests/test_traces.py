"""Turn traces and the skill-run audit log, append-only."""

from __future__ import annotations

from pathlib import Path

from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_traces import SqliteTraceStore


async def test_a_trace_and_its_skill_runs_are_recorded(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "t.sqlite3")
    await db.open(MIGRATIONS)
    try:
        store = SqliteTraceStore(db)
        run = {"skill": "disk", "version": "v1", "args": "{}", "exit_code": 0, "ok": True, "duration": 0.2, "error": ""}
        trace = {"query": "how full?", "runs": [run, {**run, "ok": False, "exit_code": 1, "error": "boom"}]}
        for r in trace["runs"]:
            await store.record_run(at=1.0, session_key="k", user_id="u1", run=r)
        await store.record(at=1.0, session_key="k", user_id="u1", inbound_ids=[3, 4], trace=trace)
        rows = await store.skill_runs()
        assert [(r["skill"], r["ok"], r["error"]) for r in rows] == [("disk", 0, "boom"), ("disk", 1, "")]
        assert rows[0]["user_id"] == "u1"
        stored = await db.read(lambda c: c.execute("SELECT inbound_ids, trace FROM turn_traces").fetchall())
        assert stored[0][0] == "[3, 4]" and '"how full?"' in stored[0][1]
    finally:
        await db.close()
