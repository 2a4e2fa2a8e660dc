"""SQLite implementation of the inbound Journal."""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Sequence

from gateway.messages import InboundMessage, SessionKey
from gateway.store.interfaces import AppendResult, JournalEntry
from gateway.store.sqlite_db import SqliteDatabase

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _key_to_text(key: SessionKey) -> str:
    """Cached: an active user's key is serialized on every message they send (keys are immutable)."""
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


def _entries(rows: Sequence[sqlite3.Row | tuple[int, str, str, int]]) -> list[JournalEntry]:
    """The rows that still parse. One that does not (e.g. written by a newer version) is left pending and
    reported, instead of failing the start-up resume or retrying its session's turn forever."""
    entries = []
    for row in rows:
        try:
            entries.append(_entry(row))
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            log.error("journaled message %s cannot be read and is skipped: %s", row[0], str(exc)[:300])
    return entries


class SqliteJournal:
    """Inbound messages keyed by (platform, bot, platform message id)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def append(self, msg: InboundMessage, key: SessionKey) -> AppendResult:
        """Durably record `msg`; a second delivery of the same message returns the first id."""
        row = (msg.platform, msg.bot_id, msg.platform_msg_id, _key_to_text(key), msg.model_dump_json())
        result: AppendResult = await self._db.write_many(_append_rows, (*row, msg.received_at.timestamp()))
        return result

    async def pending(self) -> list[JournalEntry]:
        """Messages whose turn has not completed, oldest first (resumed at start)."""

        def op(conn: sqlite3.Connection) -> list[JournalEntry]:
            rows = conn.execute(
                "SELECT id, payload, session_key, attempts FROM inbound WHERE status = 'pending' ORDER BY id"
            ).fetchall()
            return _entries(rows)

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
            return _entries(rows)

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
            return conn.execute(PRUNE_DONE_SQL, (before,)).rowcount

        return await self._db.write(op)

    async def count_pending(self) -> int:
        """How many journaled messages still wait for their turn."""

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM inbound WHERE status = 'pending'").fetchone()[0])

        return await self._db.read(op)


PRUNE_DONE_SQL = "DELETE FROM inbound WHERE status = 'done' AND done_at < ?"  # index inbound_done_at
_COLUMNS = "(platform, bot_id, platform_msg_id, session_key, payload, received_at)"
_Row = tuple[str, str, str, str, str, float]
_MAX_ROWS_PER_STATEMENT = 500  # 6 parameters each: far below SQLite's variable limit


def _append_rows(conn: sqlite3.Connection, rows: list[_Row]) -> list[AppendResult]:
    """Journal a group-commit batch of messages with one INSERT (plus one SELECT for redeliveries).

    A message delivered twice within the same batch is new for its first row and a duplicate for
    the others, exactly as if they had been committed one after the other.
    """
    results: list[AppendResult] = []
    for start in range(0, len(rows), _MAX_ROWS_PER_STATEMENT):
        results += _append_chunk(conn, rows[start : start + _MAX_ROWS_PER_STATEMENT])
    return results


def _append_chunk(conn: sqlite3.Connection, rows: list[_Row]) -> list[AppendResult]:
    values = ",".join(["(?, ?, ?, ?, ?, ?)"] * len(rows))
    inserted = {
        (p, b, m): i
        for i, p, b, m in conn.execute(
            f"INSERT INTO inbound {_COLUMNS} VALUES {values}"
            " ON CONFLICT DO NOTHING RETURNING id, platform, bot_id, platform_msg_id",
            [v for row in rows for v in row],
        )
    }
    earlier = [row[:3] for row in rows if row[:3] not in inserted]
    existing: dict[tuple[str, str, str], tuple[int, str]] = {}
    if earlier:
        keys = ",".join(["(?, ?, ?)"] * len(earlier))
        for i, p, b, m, status in conn.execute(
            "SELECT id, platform, bot_id, platform_msg_id, status FROM inbound"
            f" WHERE (platform, bot_id, platform_msg_id) IN (VALUES {keys})",
            [v for k in earlier for v in k],
        ):
            existing[(p, b, m)] = (i, status)
    results = []
    first_seen: set[tuple[str, str, str]] = set()
    for row in rows:
        k = row[:3]
        if k in inserted and k not in first_seen:
            first_seen.add(k)
            results.append(AppendResult(inbound_id=inserted[k], duplicate=False))
        elif k in inserted:  # a second delivery inside this very batch: its turn is still pending
            results.append(AppendResult(inbound_id=inserted[k], duplicate=True, pending=True))
        else:
            inbound_id, status = existing[k]
            results.append(AppendResult(inbound_id=inbound_id, duplicate=True, pending=status == "pending"))
    return results


def mark_done(conn: sqlite3.Connection, inbound_ids: Sequence[int], now: float) -> None:
    """Mark inbound messages as answered (used inside the turn-completion transaction)."""
    conn.executemany("UPDATE inbound SET status = 'done', done_at = ? WHERE id = ?", [(now, i) for i in inbound_ids])
