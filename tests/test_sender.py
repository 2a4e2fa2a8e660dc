"""Sender retry policy: bounded exponential backoff with jitter."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path

import pytest

from adapters.base import SendReceipt
from gateway.messages import ChatKind, MarkdownPart, OutboundMessage, Target
from gateway.metrics import Metrics
from gateway.sender import OutboxSender, SenderSettings, backoff_delay
from gateway.store.interfaces import OutboxItem
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_outbox import SqliteOutbox


def test_backoff_grows_is_jittered_and_capped() -> None:
    settings = SenderSettings(base_backoff=1.0, max_backoff=60.0)
    rng = random.Random(7)
    for attempts in range(12):
        ceiling = min(60.0, 2.0**attempts)
        samples = [backoff_delay(attempts, settings, rng) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len({round(s, 6) for s in samples}) > 100, "jitter spreads retries of many clients"


def test_backoff_survives_huge_attempt_counts() -> None:
    settings = SenderSettings(base_backoff=0.5, max_backoff=300.0)
    assert 150.0 <= backoff_delay(10_000, settings, random.Random(1)) <= 300.0


class _LateOutbox(SqliteOutbox):
    """Hands due() results back late, as a busy reader pool does: the race that once re-sent replies."""

    def __init__(self, db: SqliteDatabase, delay: float) -> None:
        super().__init__(db)
        self._delay = delay

    async def due(self, now: float, limit: int) -> list[OutboxItem]:
        items = await super().due(now, limit)
        await asyncio.sleep(self._delay)
        return items


class _RecordingAdapter:
    """A platform that records every delivery (test double at the adapter seam)."""

    name = "webhook"

    def __init__(self) -> None:
        self.sent: collections.Counter[str] = collections.Counter()

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        self.sent[msg.idempotency_key] += 1
        await asyncio.sleep(random.random() * 0.003)
        return SendReceipt("ok")


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01])
async def test_no_reply_is_sent_twice_when_due_results_arrive_late(tmp_path: Path, delay: float) -> None:
    db = SqliteDatabase(tmp_path / "o.sqlite3")
    await db.open(MIGRATIONS)
    try:
        outbox = _LateOutbox(db, delay)
        now = time.time()
        replies = [
            OutboundMessage(
                target=Target(platform="webhook", bot_id="b", chat_id=f"c{i % 50}", chat_kind=ChatKind.DIRECT),
                parts=(MarkdownPart(text="x" * 2000),),
                idempotency_key=f"k{i}",
            )
            for i in range(300)
        ]
        await outbox.enqueue(replies, now=now, deadline=now + 3600)
        adapter = _RecordingAdapter()
        sender = OutboxSender(outbox, {"webhook": adapter}, Metrics(), SenderSettings())  # type: ignore[dict-item]
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        for _ in range(400):
            await asyncio.sleep(0.05)
            if (await outbox.stats()).pending == 0:
                break
        stop.set()
        await task
        assert len(adapter.sent) == 300
        assert [k for k, n in adapter.sent.items() if n > 1] == []
    finally:
        await db.close()


class _FlakyMarkOutbox(SqliteOutbox):
    """Storage that fails the first writes recording an outcome (e.g. a full disk that an operator then frees)."""

    def __init__(self, db: SqliteDatabase, failures: int) -> None:
        super().__init__(db)
        self.failures = failures

    async def mark_sent(self, outbox_id: int, receipt: str, now: float) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise OSError("database or disk is full")
        await super().mark_sent(outbox_id, receipt, now)


async def test_a_sent_reply_whose_outcome_cannot_be_stored_is_not_sent_again(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "o.sqlite3")
    await db.open(MIGRATIONS)
    try:
        outbox = _FlakyMarkOutbox(db, failures=3)
        now = time.time()
        target = Target(platform="webhook", bot_id="b", chat_id="c1", chat_kind=ChatKind.DIRECT)
        reply = OutboundMessage(target=target, parts=(MarkdownPart(text="once"),), idempotency_key="k-once")
        await outbox.enqueue([reply], now=now, deadline=now + 3600)
        adapter = _RecordingAdapter()
        settings = SenderSettings(base_backoff=0.05, max_backoff=0.2, idle_poll=0.01)
        sender = OutboxSender(outbox, {"webhook": adapter}, Metrics(), settings)  # type: ignore[dict-item]
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if (await outbox.stats()).pending == 0:
                break
        stop.set()
        await task
        assert adapter.sent == {"k-once": 1}  # the old code re-sent it on every poll while the mark failed
        assert outbox.failures == 0 and (await outbox.stats()).pending == 0
    finally:
        await db.close()
