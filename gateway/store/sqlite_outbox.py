"""SQLite implementation of the Outbox and its dead-letter table."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from pydantic import TypeAdapter

from gateway.messages import OutboundMessage, Target
from gateway.store.interfaces import DeadLetter, OutboxItem, OutboxStats
from gateway.store.sqlite_db import SqliteDatabase

_OUTBOUND = TypeAdapter(OutboundMessage)


def lane_of(target: Target) -> str:
    """Replies in one chat are delivered strictly in order, one at a time."""
    return f"{target.platform}\x1f{target.bot_id}\x1f{target.chat_id}"


def insert_replies(conn: sqlite3.Connection, replies: Sequence[OutboundMessage], now: float, deadline: float) -> None:
    """Queue replies; an idempotency key already queued is ignored (a re-run turn after a crash)."""
    conn.executemany(
        "INSERT INTO outbox (idempotency_key, lane, platform, payload, next_attempt_at, created_at, deadline_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
        [
            (r.idempotency_key, lane_of(r.target), r.target.platform, r.model_dump_json(), now, now, deadline)
            for r in replies
        ],
    )


PRUNE_SENT_SQL = "DELETE FROM outbox WHERE status = 'sent' AND sent_at < ?"  # index outbox_sent_at


class SqliteOutbox:
    """Durable reply queue with per-lane ordering, retries and dead letters."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def enqueue(self, replies: Sequence[OutboundMessage], *, now: float, deadline: float) -> None:
        """Queue proactive replies that do not belong to a turn."""
        items = list(replies)
        await self._db.write(lambda conn: insert_replies(conn, items, now, deadline))

    async def due(self, now: float, limit: int) -> list[OutboxItem]:
        """The oldest pending reply of each lane, if it is due."""

        def op(conn: sqlite3.Connection) -> list[OutboxItem]:
            rows = conn.execute(
                "SELECT o.id, o.payload, o.attempts, o.next_attempt_at, o.deadline_at FROM outbox o"
                " JOIN (SELECT min(id) AS id FROM outbox WHERE status = 'pending' GROUP BY lane) h"
                " ON o.id = h.id WHERE o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
                (now, limit),
            ).fetchall()
            return [
                OutboxItem(
                    outbox_id=r[0],
                    message=_OUTBOUND.validate_json(r[1]),
                    attempts=r[2],
                    next_attempt_at=r[3],
                    deadline_at=r[4],
                )
                for r in rows
            ]

        return await self._db.read(op)

    async def next_due_at(self) -> float | None:
        """When the earliest lane head becomes due (None when nothing is pending)."""

        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT min(o.next_attempt_at) FROM outbox o JOIN (SELECT min(id) AS id FROM outbox"
                " WHERE status = 'pending' GROUP BY lane) h ON o.id = h.id"
            ).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._db.read(op)

    async def mark_sent(self, outbox_id: int, receipt: str, now: float) -> None:
        """Record delivery so the reply is never sent again."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET status = 'sent', sent_at = ?, receipt = ?, attempts = attempts + 1"
                " WHERE id = ? AND status = 'pending'",
                (now, receipt, outbox_id),
            )

        await self._db.write(op)

    async def mark_retry(self, outbox_id: int, next_attempt_at: float, code: str, error: str) -> None:
        """Record a failed attempt and when to try again."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_code = ?, last_error = ?"
                " WHERE id = ? AND status = 'pending'",
                (next_attempt_at, code, error[:500], outbox_id),
            )

        await self._db.write(op)

    async def release(self, target: Target, now: float) -> int:
        """Parked replies of this chat become due now (order within the lane is unchanged)."""
        lane = lane_of(target)

        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE lane = ? AND status = 'pending' AND next_attempt_at > ?",
                (now, lane, now),
            )
            return cur.rowcount

        return await self._db.write(op)

    async def mark_dead(self, outbox_id: int, reason: str, code: str, now: float) -> None:
        """Give up on a reply: it moves to the dead-letter table for operators."""

        def op(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_code = ?, last_error = ?"
                " WHERE id = ? AND status = 'pending'",
                (code, reason[:500], outbox_id),
            )
            if cur.rowcount:
                conn.execute(
                    "INSERT INTO dead_letters (outbox_id, idempotency_key, platform, reason, code, attempts, died_at)"
                    " SELECT id, idempotency_key, platform, ?, ?, attempts, ? FROM outbox WHERE id = ?",
                    (reason[:500], code, now, outbox_id),
                )

        await self._db.write(op)

    async def stats(self) -> OutboxStats:
        """Pending and dead counts."""

        def op(conn: sqlite3.Connection) -> OutboxStats:
            pending = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
            dead = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            return OutboxStats(pending=int(pending), dead=int(dead))

        return await self._db.read(op)

    async def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        """Most recent dead letters first."""

        def op(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(
                "SELECT outbox_id, idempotency_key, platform, reason, code, attempts, died_at FROM dead_letters"
                " ORDER BY died_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [DeadLetter(*r) for r in rows]

        return await self._db.read(op)

    async def prune_sent(self, before: float) -> int:
        """Delete delivered replies older than `before` (dead letters are kept for operators)."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute(PRUNE_SENT_SQL, (before,)).rowcount

        return await self._db.write(op)
