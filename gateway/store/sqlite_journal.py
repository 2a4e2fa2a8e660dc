"""SQLite implementation of the inbound Journal."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from gateway.messages import InboundMessage, SessionKey
from gateway.store.interfaces import AppendResult, JournalEntry
from gateway.store.sqlite_db import SqliteDatabase


def _key_to_text(key: SessionKey) -> str:
    return key.model_dump_json()


def key_from_text(text: str) -> SessionKey:
    """Parse a SessionKey stored by this module."""
    return SessionKey.model_validate_json(text)


def _entry(row: sqlite3.Row | tuple[int, str, str, int]) -> JournalEntry:
    inbound_id, payload, key, attempts = row
    return JournalEntry(
        inbound_id=inbound_id,
        message=InboundMessage.model_validate_json(payload),
        session_key=key_from_text(key),
        attempts=attempts,
    )


class SqliteJournal:
    """Inbound messages keyed by (platform, bot, platform message id)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def append(self, msg: InboundMessage, key: SessionKey) -> AppendResult:
        """Durably record `msg`; a second delivery of the same message returns the first id."""
        payload = msg.model_dump_json()
        key_text = _key_to_text(key)
        received = msg.received_at.timestamp()

        def op(conn: sqlite3.Connection) -> AppendResult:
            row = conn.execute(
                "INSERT INTO inbound (platform, bot_id, platform_msg_id, session_key, payload, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
                (msg.platform, msg.bot_id, msg.platform_msg_id, key_text, payload, received),
            ).fetchone()
            if row is not None:
                return AppendResult(inbound_id=row[0], duplicate=False)
            existing = conn.execute(
                "SELECT id, status FROM inbound WHERE platform = ? AND bot_id = ? AND platform_msg_id = ?",
                (msg.platform, msg.bot_id, msg.platform_msg_id),
            ).fetchone()
            return AppendResult(inbound_id=existing[0], duplicate=True, pending=existing[1] == "pending")

        return await self._db.write(op)

    async def pending(self) -> list[JournalEntry]:
        """Messages whose turn has not completed, oldest first (resumed at start)."""

        def op(conn: sqlite3.Connection) -> list[JournalEntry]:
            rows = conn.execute(
                "SELECT id, payload, session_key, attempts FROM inbound WHERE status = 'pending' ORDER BY id"
            ).fetchall()
            return [_entry(r) for r in rows]

        return await self._db.read(op)

    async def load(self, inbound_ids: Sequence[int]) -> list[JournalEntry]:
        """The still-pending entries among `inbound_ids`, in id order."""
        ids = list(inbound_ids)

        def op(conn: sqlite3.Connection) -> list[JournalEntry]:
            marks = ",".join("?" * len(ids))
            rows = conn.execute(
                f"SELECT id, payload, session_key, attempts FROM inbound"
                f" WHERE id IN ({marks}) AND status = 'pending' ORDER BY id",
                ids,
            ).fetchall()
            return [_entry(r) for r in rows]

        return await self._db.read(op) if ids else []

    async def begin_attempt(self, inbound_ids: Sequence[int]) -> None:
        """Count an attempt before the turn runs, so a message that crashes us is not retried forever."""
        ids = [(i,) for i in inbound_ids]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE inbound SET attempts = attempts + 1 WHERE id = ?", ids)

        await self._db.write(op)

    async def undo_attempt(self, inbound_ids: Sequence[int]) -> None:
        """Take back an attempt that ended because we shut down, not because the message broke us."""
        ids = [(i,) for i in inbound_ids]

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany("UPDATE inbound SET attempts = max(attempts - 1, 0) WHERE id = ?", ids)

        await self._db.write(op)

    async def prune_done(self, before: float) -> int:
        """Forget answered messages older than `before`: the dedup window is this retention."""

        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM inbound WHERE status = 'done' AND done_at < ?", (before,)).rowcount

        return await self._db.write(op)

    async def count_pending(self) -> int:
        """How many journaled messages still wait for their turn."""

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM inbound WHERE status = 'pending'").fetchone()[0])

        return await self._db.read(op)


def mark_done(conn: sqlite3.Connection, inbound_ids: Sequence[int], now: float) -> None:
    """Mark inbound messages as answered (used inside the turn-completion transaction)."""
    conn.executemany("UPDATE inbound SET status = 'done', done_at = ? WHERE id = ?", [(now, i) for i in inbound_ids])
