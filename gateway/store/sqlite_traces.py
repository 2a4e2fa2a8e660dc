"""SQLite storage of turn traces and the skill-run audit log."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.store.sqlite_db import SqliteDatabase


class SqliteTraceStore:
    """Append-only; read by the reflection step and by operators."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def record(
        self, *, at: float, session_key: str, user_id: str, inbound_ids: Sequence[int], trace: dict[str, Any]
    ) -> None:
        """One turn's trace (its skill runs are audited one by one as they end: see `record_run`)."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO turn_traces (at, session_key, inbound_ids, trace) VALUES (?, ?, ?, ?)",
                (at, session_key, json.dumps(list(inbound_ids)), json.dumps(trace, ensure_ascii=False)),
            )

        await self._db.write(op)

    async def record_run(self, *, at: float, session_key: str, user_id: str, run: Mapping[str, Any]) -> None:
        """The audit row of one skill run, durable before the model sees the run's result."""
        row = (
            at,
            session_key,
            user_id,
            run["skill"],
            run["version"],
            run["args"],
            run["exit_code"],
            int(run["ok"]),
            run["duration"],
            run["error"],
        )

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO skill_runs (at, session_key, user_id, skill, version, args, exit_code, ok, duration,"
                " error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._db.write(op)

    async def skill_outcomes(self, since: float) -> dict[str, tuple[int, int]]:
        """Per skill: (successful runs, all runs) since `since` (the router's utility prior)."""

        def op(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
            rows = conn.execute(
                "SELECT skill, sum(ok), count(*) FROM skill_runs WHERE at >= ? GROUP BY skill", (since,)
            ).fetchall()
            return {skill: (int(ok), int(total)) for skill, ok, total in rows}

        return await self._db.read(op)

    async def skill_runs(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest audit rows."""

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cur = conn.execute(
                "SELECT at, session_key, user_id, skill, version, args, exit_code, ok, duration, error"
                " FROM skill_runs ORDER BY id DESC LIMIT ?",
                (limit,),
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

        return await self._db.read(op)
