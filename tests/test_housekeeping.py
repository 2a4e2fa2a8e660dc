"""Housekeeping runs once as a plain function: old rows pruned, fresh ones and dead letters kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.housekeeping import run_housekeeping
from gateway.messages import ChatKind, InboundMessage, MarkdownPart, OutboundMessage, reply_target, session_key_for
from gateway.store.interfaces import TurnRecord
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_journal import PRUNE_DONE_SQL, SqliteJournal
from gateway.store.sqlite_ledger import SqliteTurnLedger
from gateway.store.sqlite_outbox import PRUNE_SENT_SQL, SqliteOutbox
from sessions.manager import SessionManager
from sessions.store import SqliteSessionStore


async def test_prunes_only_what_is_old_and_finished(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "h.sqlite3")
    await db.open(MIGRATIONS)
    journal, outbox, ledger = SqliteJournal(db), SqliteOutbox(db), SqliteTurnLedger(db)
    try:
        ids = {}
        for mid, done_at in (("old", 100.0), ("new", 900.0)):
            msg = InboundMessage(
                platform="t", bot_id="b", platform_msg_id=mid, chat_id=mid, chat_kind=ChatKind.DIRECT, sender_id="u"
            )
            r = await journal.append(msg, session_key_for(msg))
            ids[mid] = r.inbound_id
            reply = OutboundMessage(target=reply_target(msg), parts=(MarkdownPart(text="x"),), idempotency_key=mid)
            await ledger.complete_turn(
                TurnRecord(session_key_for(msg), (r.inbound_id,), ()), [reply], now=done_at, deadline=done_at + 10
            )
            [item] = await outbox.due(now=done_at, limit=5)
            if mid == "old":
                await outbox.mark_sent(item.outbox_id, "", now=done_at)
            else:
                await outbox.mark_dead(item.outbox_id, "gone", "400", now=done_at)
        pending_msg = InboundMessage(
            platform="t", bot_id="b", platform_msg_id="pending", chat_id="p", chat_kind=ChatKind.DIRECT, sender_id="u"
        )
        await journal.append(pending_msg, session_key_for(pending_msg))
        report = await run_housekeeping(
            journal, outbox, SessionManager(SqliteSessionStore(db)), now=1000.0, retention_seconds=500.0
        )
        assert (report.inbound_pruned, report.outbox_pruned) == (1, 1)
        assert [e.message.platform_msg_id for e in await journal.pending()] == ["pending"]
        assert (await outbox.stats()).dead == 1
        old = InboundMessage(
            platform="t", bot_id="b", platform_msg_id="new", chat_id="new", chat_kind=ChatKind.DIRECT, sender_id="u"
        )
        assert (await journal.append(old, session_key_for(old))).duplicate, "within retention: still deduped"
    finally:
        await db.close()


async def test_pruning_seeks_the_old_rows_instead_of_scanning_the_tables(db: SqliteDatabase) -> None:
    # It runs every 30 s on the writer thread: a full scan of a week of messages (~200 ms at a million rows)
    # would hold up every ack waiting for a journal commit.
    def plans(conn: sqlite3.Connection) -> list[str]:
        statements = (PRUNE_DONE_SQL, PRUNE_SENT_SQL)
        return [" ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, (0.0,))) for sql in statements]

    done, sent = await db.read(plans)
    assert "USING INDEX inbound_done_at" in done and "SCAN" not in done
    assert "USING INDEX outbox_sent_at" in sent and "SCAN" not in sent
