"""Core reply paths that platforms need: pieces, live streams, and replies parked until the user writes."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

import adapters.webhook as webhook
from adapters.base import ReplyStream, SendReceipt
from gateway.app import Runtime
from gateway.errors import AwaitingRecipient
from gateway.messages import ChatKind, OutboundMessage, Target, TextPart
from gateway.metrics import Metrics
from gateway.replies import ReplyChannels
from gateway.sender import OutboxSender, SenderSettings
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_outbox import SqliteOutbox
from tests.conftest import ENV, make_settings
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.webhook_peer import CallbackReceiver, make_payload
from tests.test_e2e import post


def _reply(chat: str, key: str, text: str = "hi") -> OutboundMessage:
    target = Target(platform="webhook", bot_id="b", chat_id=chat, chat_kind=ChatKind.DIRECT)
    return OutboundMessage(target=target, parts=(TextPart(text=text),), idempotency_key=key)


class _PullPlatform:
    """A platform that can only answer a chat while its user has a request open (test double at the seam)."""

    name = "webhook"

    def __init__(self) -> None:
        self.reachable: set[str] = set()
        self.sent: list[str] = []
        self.attempts: list[str] = []

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        self.attempts.append(msg.idempotency_key)
        if msg.target.chat_id not in self.reachable:
            raise AwaitingRecipient("no push permission; waiting for the user", code="awaiting_recipient")
        self.sent.append(msg.idempotency_key)
        return SendReceipt("ok")


async def _wait(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.fixture
async def outbox(tmp_path: Path):  # type: ignore[no-untyped-def]
    db = SqliteDatabase(tmp_path / "o.sqlite3")
    await db.open(MIGRATIONS)
    yield SqliteOutbox(db)
    await db.close()


async def test_parked_replies_wait_in_order_and_go_out_when_released(outbox: SqliteOutbox) -> None:
    now = time.time()
    await outbox.enqueue([_reply("u1", "a"), _reply("u1", "b"), _reply("u2", "c")], now=now, deadline=now + 60)
    platform = _PullPlatform()
    platform.reachable.add("u2")
    sender = OutboxSender(outbox, {"webhook": platform}, Metrics(), SenderSettings(idle_poll=0.05))  # type: ignore[dict-item]
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await _wait(lambda: platform.sent == ["c"] and platform.attempts.count("a") == 1)
        await asyncio.sleep(0.3)  # parked: not retried on a timer, and "b" never overtakes "a"
        assert platform.attempts.count("a") == 1 and "b" not in platform.attempts
        assert (await outbox.stats()).pending == 2

        platform.reachable.add("u1")
        assert await outbox.release(_reply("u1", "x").target, time.time()) == 1  # "a"; "b" was never tried
        sender.wake()
        await _wait(lambda: platform.sent == ["c", "a", "b"])
        assert await outbox.release(_reply("u1", "x").target, time.time()) == 0
    finally:
        stop.set()
        await task
    assert (await outbox.stats()).pending == 0 and not await outbox.dead_letters()


async def test_a_parked_reply_becomes_a_dead_letter_at_its_deadline(outbox: SqliteOutbox) -> None:
    now = time.time()
    await outbox.enqueue([_reply("u1", "late")], now=now, deadline=now + 0.4)
    platform = _PullPlatform()
    sender = OutboxSender(outbox, {"webhook": platform}, Metrics(), SenderSettings(idle_poll=0.05))  # type: ignore[dict-item]
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await _wait(lambda: len(platform.attempts) >= 2)
        for _ in range(100):
            if await outbox.dead_letters():
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    [dead] = await outbox.dead_letters()
    assert "recipient never became reachable" in dead.reason and dead.code == "awaiting_recipient"
    assert platform.attempts == ["late", "late"]  # once when due, once at the deadline: no busy loop


class _Stream:
    def __init__(self, log: list[str]) -> None:
        self._log = log

    async def update(self, text: str) -> None:
        self._log.append(text)


class _SplittingWebhook(webhook.WebhookAdapter):
    """The real webhook adapter, made to cut replies into lines and to stream (a platform with both needs)."""

    updates: list[str]
    broken = False

    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        if self.broken:
            raise RuntimeError("shaping bug")
        lines = reply.text.split(" ")
        return [
            reply.model_copy(
                update={"parts": (TextPart(text=line),), "idempotency_key": f"{reply.idempotency_key}.{i}"}
            )
            for i, line in enumerate(lines)
        ]

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        return _Stream(self.updates)


async def _runtime_with(adapter: webhook.WebhookAdapter, tmp_path: Path, llm: FakeLLM, rx: CallbackReceiver) -> Runtime:
    settings = make_settings(tmp_path, llm.base_url, rx.url)
    runtime = Runtime(settings, ENV, adapters={"webhook": adapter})
    await runtime.start()
    return runtime


def _splitting(tmp_path: Path, llm: FakeLLM, rx: CallbackReceiver) -> _SplittingWebhook:
    raw = make_settings(tmp_path, llm.base_url, rx.url).adapters["webhook"]
    config = webhook.parse_config(raw)
    adapter = _SplittingWebhook(config, webhook.resolve_secrets(config, ENV))
    adapter.updates = []
    return adapter


async def test_reply_pieces_are_queued_and_delivered_in_order_and_the_stream_sees_the_answer_grow(
    tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver
) -> None:
    adapter = _splitting(tmp_path, fake_llm, receiver)
    fake_llm.enqueue("one two three four five six")
    rt = await _runtime_with(adapter, tmp_path, fake_llm, receiver)
    try:
        status, _ = await post(rt, make_payload("m1", "c1", "alice", "count"))
        assert status == 200
        got = await receiver.async_wait_visible(6)
    finally:
        await rt.stop()
    assert [d.body["text"] for d in got] == ["one", "two", "three", "four", "five", "six"]
    assert len({d.idempotency_key for d in got}) == 6
    progress = [u for u in adapter.updates if u.startswith("⏳")]
    answer = [u for u in adapter.updates if not u.startswith("⏳")]
    assert progress and adapter.updates[0] == progress[0]  # "thinking" shows before any text
    assert answer, "a streaming platform gets live updates of the answer"
    assert all(b.startswith(a) for a, b in itertools.pairwise(answer))
    assert answer[-1] == "one two three four five six"
    assert fake_llm.chat_requests()[0].body.get("stream") is True


async def test_a_failing_prepare_still_delivers_the_whole_answer(
    tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver
) -> None:
    adapter = _splitting(tmp_path, fake_llm, receiver)
    adapter.broken = True
    fake_llm.enqueue("all in one")
    rt = await _runtime_with(adapter, tmp_path, fake_llm, receiver)
    try:
        await post(rt, make_payload("m1", "c1", "alice", "hi"))
        [got] = await receiver.async_wait_visible(1)
    finally:
        await rt.stop()
    assert got.body["text"] == "all in one"


def test_channels_refuse_pieces_that_share_a_key() -> None:
    reply = _reply("u1", "k")

    class Dup:
        def prepare(self, r: OutboundMessage) -> list[OutboundMessage]:
            return [r, r]

        def open_stream(self, target: Target, key: str) -> None:
            raise RuntimeError("boom")

    channels = ReplyChannels({"webhook": Dup()})  # type: ignore[dict-item]
    assert channels.prepare(reply) == [reply]
    assert channels.open_stream(reply.target, "k") is None
    assert ReplyChannels({}).prepare(reply) == [reply]
