"""SQLite journal, outbox, ledger and session store against a real database file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.messages import ChatKind, InboundMessage, MarkdownPart, OutboundMessage, reply_target, session_key_for
from gateway.store.interfaces import HistoryMessage, TurnRecord
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase, apply_migrations
from gateway.store.sqlite_journal import SqliteJournal
from gateway.store.sqlite_ledger import SqliteTurnLedger
from gateway.store.sqlite_outbox import SqliteOutbox
from sessions.store import SqliteSessionStore


def inbound(mid: str, user: str = "u1", chat: str = "c1", kind: ChatKind = ChatKind.DIRECT) -> InboundMessage:
    return InboundMessage(
        platform="test", bot_id="b", platform_msg_id=mid, chat_id=chat, chat_kind=kind, sender_id=user, text=mid
    )


def reply(msg: InboundMessage, key: str, text: str = "hi") -> OutboundMessage:
    return OutboundMessage(target=reply_target(msg), parts=(MarkdownPart(text=text),), idempotency_key=key)


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    batches: list[int] = []
    database = SqliteDatabase(tmp_path / "t.sqlite3", on_batch=batches.append)
    await database.open(MIGRATIONS)
    database.batches = batches  # type: ignore[attr-defined]
    yield database
    await database.close()


async def test_append_dedupes_and_returns_first_id(db: SqliteDatabase) -> None:
    journal = SqliteJournal(db)
    msg = inbound("m1")
    key = session_key_for(msg)
    first = await journal.append(msg, key)
    again = await journal.append(msg, key)
    assert not first.duplicate
    assert again.duplicate
    assert again.inbound_id == first.inbound_id
    pending = await journal.pending()
    assert [e.inbound_id for e in pending] == [first.inbound_id]
    assert pending[0].message == msg
    assert pending[0].session_key == key


async def test_an_unreadable_journal_row_is_skipped_and_reported_not_fatal(
    db: SqliteDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    journal = SqliteJournal(db)
    good, bad = inbound("good"), inbound("bad", user="u2")
    good_id = (await journal.append(good, session_key_for(good))).inbound_id
    bad_id = (await journal.append(bad, session_key_for(bad))).inbound_id

    def corrupt(conn: sqlite3.Connection) -> None:  # e.g. written by a newer version with another schema
        conn.execute("UPDATE inbound SET payload = '{\"platform\": 7}' WHERE id = ?", (bad_id,))

    await db.write(corrupt)
    assert [e.inbound_id for e in await journal.pending()] == [good_id]  # start-up resume still works
    assert await journal.load([bad_id, good_id]) == await journal.pending()  # its session's turn does not loop
    assert any(str(bad_id) in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert await journal.count_pending() == 2  # kept, not silently deleted


async def test_concurrent_appends_are_group_committed(db: SqliteDatabase) -> None:
    journal = SqliteJournal(db)
    msgs = [inbound(f"m{i}", user=f"u{i % 7}") for i in range(300)]
    results = await asyncio.gather(*(journal.append(m, session_key_for(m)) for m in msgs))
    assert len({r.inbound_id for r in results}) == 300
    batches = db.batches  # type: ignore[attr-defined]
    assert sum(batches) >= 300
    assert max(batches) > 1, "writes issued together must share transactions"
    assert len(batches) < 300


async def test_same_message_concurrently_yields_one_row(db: SqliteDatabase) -> None:
    journal = SqliteJournal(db)
    msg = inbound("dup")
    results = await asyncio.gather(*(journal.append(msg, session_key_for(msg)) for _ in range(5)))
    assert len({r.inbound_id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1


async def test_one_batch_mixing_new_redelivered_and_answered_messages(db: SqliteDatabase) -> None:
    journal = SqliteJournal(db)
    old, answered = inbound("old"), inbound("answered")
    first_old = await journal.append(old, session_key_for(old))
    first_answered = await journal.append(answered, session_key_for(answered))

    def answer(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE inbound SET status = 'done' WHERE id = ?", (first_answered.inbound_id,))

    await db.write(answer)
    news = [inbound(f"new{i}") for i in range(6)]
    batch = [news[0], old, news[1], news[1], answered, *news[2:], old]
    results = await asyncio.gather(*(journal.append(m, session_key_for(m)) for m in batch))
    assert [r.duplicate for r in results] == [False, True, False, True, True, False, False, False, False, True]
    assert results[1].inbound_id == results[-1].inbound_id == first_old.inbound_id
    assert results[1].pending and not results[4].pending  # an answered message must not be queued again
    assert results[4].inbound_id == first_answered.inbound_id
    assert results[2].inbound_id == results[3].inbound_id and results[3].pending
    assert len({r.inbound_id for r in results}) == 8
    assert len(await journal.pending()) == 7  # old + six new


async def test_batch_op_answering_the_wrong_number_of_results_fails_only_its_callers(db: SqliteDatabase) -> None:
    def sloppy(conn: sqlite3.Connection, items: list[int]) -> list[int]:
        return items[:1]

    def fine(conn: sqlite3.Connection) -> int:
        return 7

    sloppy_calls = [asyncio.ensure_future(db.write_many(sloppy, i)) for i in range(3)]
    ok = asyncio.ensure_future(db.write(fine))
    # Alone (the fallback after the batch failed) each item gets its one result.
    assert await asyncio.gather(*sloppy_calls) == [0, 1, 2]
    assert await ok == 7


async def test_failing_write_does_not_poison_its_batch(db: SqliteDatabase) -> None:
    journal = SqliteJournal(db)

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    msgs = [inbound(f"ok{i}") for i in range(20)]
    tasks = [asyncio.ensure_future(journal.append(m, session_key_for(m))) for m in msgs[:10]]
    bad_task = asyncio.ensure_future(db.write(bad))
    tasks += [asyncio.ensure_future(journal.append(m, session_key_for(m))) for m in msgs[10:]]
    with pytest.raises(sqlite3.OperationalError):
        await bad_task
    assert len(await asyncio.gather(*tasks)) == 20
    assert len(await journal.pending()) == 20


async def test_ledger_completes_turn_atomically_and_once(db: SqliteDatabase) -> None:
    journal, ledger, outbox = SqliteJournal(db), SqliteTurnLedger(db), SqliteOutbox(db)
    store = SqliteSessionStore(db)
    msg = inbound("m1")
    key = session_key_for(msg)
    appended = await journal.append(msg, key)
    record = TurnRecord(
        session_key=key,
        inbound_ids=(appended.inbound_id,),
        messages=(HistoryMessage("user", "m1"), HistoryMessage("assistant", "hi")),
    )
    await ledger.complete_turn(record, [reply(msg, "k1")], now=100.0, deadline=200.0)
    await ledger.complete_turn(record, [reply(msg, "k1")], now=101.0, deadline=200.0)  # a re-run: no-op
    assert await journal.pending() == []
    assert [m.content for m in await store.history(key, 10)] == ["m1", "hi"]
    info = await store.info(key)
    assert info is not None and info[2] == 1
    due = await outbox.due(now=150.0, limit=10)
    assert [d.message.idempotency_key for d in due] == ["k1"]


async def test_outbox_lanes_deliver_in_order_one_at_a_time(db: SqliteDatabase) -> None:
    outbox = SqliteOutbox(db)
    a1, a2 = inbound("a1", chat="A"), inbound("a2", chat="A")
    b1 = inbound("b1", chat="B")
    await outbox.enqueue([reply(a1, "a1"), reply(a2, "a2"), reply(b1, "b1")], now=10.0, deadline=1000.0)
    due = await outbox.due(now=10.0, limit=10)
    assert sorted(d.message.idempotency_key for d in due) == ["a1", "b1"]
    a_head = next(d for d in due if d.message.idempotency_key == "a1")
    await outbox.mark_retry(a_head.outbox_id, next_attempt_at=50.0, code="500", error="boom")
    due = await outbox.due(now=20.0, limit=10)
    assert [d.message.idempotency_key for d in due] == ["b1"], "a2 must wait behind a1"
    assert await outbox.next_due_at() == 10.0
    await outbox.mark_sent(due[0].outbox_id, "r", now=21.0)
    assert await outbox.next_due_at() == 50.0
    due = await outbox.due(now=60.0, limit=10)
    assert [(d.message.idempotency_key, d.attempts) for d in due] == [("a1", 1)]
    await outbox.mark_dead(due[0].outbox_id, "gone", "400", now=61.0)
    due = await outbox.due(now=62.0, limit=10)
    assert [d.message.idempotency_key for d in due] == ["a2"]
    stats = await outbox.stats()
    assert (stats.pending, stats.dead) == (1, 1)
    letters = await outbox.dead_letters()
    assert [(d.idempotency_key, d.reason, d.code) for d in letters] == [("a1", "gone", "400")]


async def test_duplicate_idempotency_key_is_queued_once(db: SqliteDatabase) -> None:
    outbox = SqliteOutbox(db)
    m = inbound("x")
    await outbox.enqueue([reply(m, "same")], now=1.0, deadline=10.0)
    await outbox.enqueue([reply(m, "same", text="other")], now=2.0, deadline=10.0)
    assert (await outbox.stats()).pending == 1


async def test_history_is_per_session(db: SqliteDatabase) -> None:
    journal, ledger, store = SqliteJournal(db), SqliteTurnLedger(db), SqliteSessionStore(db)
    for user in ("alice", "bob"):
        msg = inbound(f"m-{user}", user=user, chat="g", kind=ChatKind.GROUP)
        key = session_key_for(msg)
        r = await journal.append(msg, key)
        rec = TurnRecord(key, (r.inbound_id,), (HistoryMessage("user", f"secret of {user}"),))
        await ledger.complete_turn(rec, [], now=1.0, deadline=2.0)
    alice = session_key_for(inbound("z", user="alice", chat="g", kind=ChatKind.GROUP))
    assert [m.content for m in await store.history(alice, 10)] == ["secret of alice"]


def test_migrations_run_once_by_name(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)
    calls: list[str] = []

    def m1(c: sqlite3.Connection) -> None:
        calls.append("m1")
        c.execute("CREATE TABLE t (x)")

    def m2(c: sqlite3.Connection) -> None:
        calls.append("m2")
        c.execute("ALTER TABLE t ADD COLUMN y")

    assert apply_migrations(conn, [("001", m1)]) == ["001"]
    assert apply_migrations(conn, [("001", m1), ("002", m2)]) == ["002"]
    assert apply_migrations(conn, [("001", m1), ("002", m2)]) == []
    assert calls == ["m1", "m2"]


def test_failed_migration_is_not_recorded(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.sqlite3", isolation_level=None)

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE t (x)")
        raise RuntimeError("half way")

    with pytest.raises(RuntimeError):
        apply_migrations(conn, [("001", broken)])
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 't'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM _migrations").fetchone()[0] == 0


async def test_journal_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "r.sqlite3"
    first = SqliteDatabase(path)
    await first.open(MIGRATIONS)
    msg = inbound("persist")
    await SqliteJournal(first).append(msg, session_key_for(msg))
    await first.close()
    second = SqliteDatabase(path)
    await second.open(MIGRATIONS)
    try:
        pending = await SqliteJournal(second).pending()
        assert [e.message.platform_msg_id for e in pending] == ["persist"]
    finally:
        await second.close()
