"""TurnRunner against a real database and the fake LLM: poison isolation, stable reply keys,
attempt accounting on shutdown, and no reply lost when journal ids are recycled after pruning."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent_core.chat import ChatAgent
from agent_core.llm import LiteLLMClient, LLMProfile
from gateway.messages import ChatKind, InboundMessage, session_key_for
from gateway.metrics import Metrics
from gateway.responders import PlainResponder
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_journal import SqliteJournal
from gateway.store.sqlite_ledger import SqliteTurnLedger
from gateway.store.sqlite_outbox import SqliteOutbox
from gateway.turns import POISON_REPLY, TurnRunner, TurnSettings, reply_key
from sessions.manager import SessionManager
from sessions.store import SqliteSessionStore
from tests.fakes.fake_llm import FakeLLM


def msg(mid: str, text: str = "hello", user: str = "u") -> InboundMessage:
    return InboundMessage(
        platform="webhook",
        bot_id="b",
        platform_msg_id=mid,
        chat_id="c",
        chat_kind=ChatKind.DIRECT,
        sender_id=user,
        text=text,
    )


@dataclass
class Parts:
    db: SqliteDatabase
    journal: SqliteJournal
    outbox: SqliteOutbox
    runner: TurnRunner


@pytest.fixture
async def parts(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Parts]:
    db = SqliteDatabase(tmp_path / "t.sqlite3")
    await db.open(MIGRATIONS)
    journal, outbox = SqliteJournal(db), SqliteOutbox(db)
    profile = LLMProfile(model="openai/fake-model", api_base=fake_llm.base_url, retries=0, timeout=10)
    runner = TurnRunner(
        journal=journal,
        ledger=SqliteTurnLedger(db),
        sessions=SessionManager(SqliteSessionStore(db)),
        agent=PlainResponder(ChatAgent(LiteLLMClient({"default": profile}, "default", {}))),
        metrics=Metrics(),
        settings=TurnSettings(max_attempts=3),
        on_replies_queued=lambda: None,
    )
    yield Parts(db, journal, outbox, runner)
    await db.close()


async def test_poisoned_message_does_not_poison_messages_merged_with_it(parts: Parts, fake_llm: FakeLLM) -> None:
    bad, good = msg("m1", "crashes us"), msg("m2", "innocent question")
    key = session_key_for(bad)
    a = (await parts.journal.append(bad, key)).inbound_id
    for _ in range(3):
        await parts.journal.begin_attempt([a])
    b = (await parts.journal.append(good, key)).inbound_id
    await parts.runner(key, [a, b])
    replies = {i.message.idempotency_key: i.message.text for i in await parts.outbox.due(1e12, 10)}
    assert replies == {reply_key(bad, 0): POISON_REPLY}, "one lane: the poison reply is first in line"
    assert await parts.journal.count_pending() == 0
    [request] = fake_llm.chat_requests()
    assert request.messages[-1]["content"] == "innocent question"


def test_reply_keys_are_stable_unique_and_short() -> None:
    assert reply_key(msg("m1"), 0) == reply_key(msg("m1", text="other text", user="x"), 0)
    assert reply_key(msg("m1"), 0) != reply_key(msg("m2"), 0)
    assert reply_key(msg("m1"), 0) != reply_key(msg("m1"), 1)
    other_bot = msg("m1").model_copy(update={"bot_id": "b2"})
    assert reply_key(msg("m1"), 0) != reply_key(other_bot, 0)
    assert len(reply_key(msg("m" * 128), 99)) <= 40


async def test_recycled_journal_ids_never_swallow_a_reply(parts: Parts) -> None:
    first = msg("m1", "old question")
    key = session_key_for(first)
    a = (await parts.journal.append(first, key)).inbound_id
    await parts.runner(key, [a])
    [item] = await parts.outbox.due(1e12, 10)
    await parts.outbox.mark_dead(item.outbox_id, "callback down", "503", now=1.0)  # dead letters are kept
    assert await parts.journal.prune_done(before=1e12) == 1
    second = msg("m2", "new question")
    b = (await parts.journal.append(second, key)).inbound_id
    assert b == a, "SQLite hands out the pruned id again; the reply key must not depend on it"
    await parts.runner(key, [b])
    [queued] = await parts.outbox.due(1e12, 10)
    assert queued.message.text == "echo: new question"


async def test_turn_cancelled_by_shutdown_does_not_count_as_an_attempt(parts: Parts, fake_llm: FakeLLM) -> None:
    fake_llm.latency = 5
    m = msg("slow")
    key = session_key_for(m)
    a = (await parts.journal.append(m, key)).inbound_id
    turn = asyncio.ensure_future(parts.runner(key, [a]))
    await asyncio.sleep(0.5)
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn
    [entry] = await parts.journal.pending()
    assert entry.attempts == 0
