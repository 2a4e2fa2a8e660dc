"""Atomic turn completion over SQLite: the heart of exactly-once replies.

History, queued replies and the inbound "done" mark are written in ONE transaction. A crash
before it commits leaves the inbound pending (the turn re-runs, nothing was visible yet); a
crash after it leaves the replies in the outbox (sent once by the sender worker).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from gateway.messages import OutboundMessage
from gateway.store.interfaces import TurnRecord
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_journal import mark_done
from gateway.store.sqlite_outbox import insert_replies
from sessions.store import append_messages


class SqliteTurnLedger:
    """Implements TurnLedger on the shared SQLite database."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def complete_turn(
        self, record: TurnRecord, replies: Sequence[OutboundMessage], *, now: float, deadline: float
    ) -> None:
        """Persist the whole outcome of a turn at once."""
        items = list(replies)

        def op(conn: sqlite3.Connection) -> None:
            placeholders = ",".join("?" * len(record.inbound_ids))
            still_pending = conn.execute(
                f"SELECT count(*) FROM inbound WHERE id IN ({placeholders}) AND status = 'pending'",
                record.inbound_ids,
            ).fetchone()[0]
            if record.inbound_ids and still_pending == 0:
                return  # already completed by an earlier run of this turn
            if record.messages:
                append_messages(conn, record.session_key, record.messages, now)
            insert_replies(conn, items, now, deadline)
            mark_done(conn, record.inbound_ids, now)

        await self._db.write(op)
