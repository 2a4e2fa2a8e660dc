"""Streaming cards against the fake Feishu API: one card per reply, paced updates, exactly one finalize."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.feishu.api import FeishuApi
from adapters.feishu.cards import CardStreams
from gateway.host import NamespacedState
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_kv import SqliteKeyValueStore
from tests.fakes.feishu_api import APP_ID, APP_SECRET, FakeFeishuAPI

CHAT = "oc_chat_1"
INBOUND = "om_inbound_1"


@pytest.fixture
def api() -> Any:
    with FakeFeishuAPI() as fake:
        fake.add_message(INBOUND, CHAT, sender_open_id="ou_user")
        yield fake


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteKeyValueStore]:
    db = SqliteDatabase(tmp_path / "kv.sqlite3")
    await db.open(MIGRATIONS)
    yield SqliteKeyValueStore(db)
    await db.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def streams(api: FakeFeishuAPI, store: SqliteKeyValueStore, http: aiohttp.ClientSession, **kw: float) -> CardStreams:
    client = FeishuApi(lambda: http, api.base_url, APP_ID, APP_SECRET)
    state = NamespacedState(store, "feishu")
    return CardStreams(
        lambda bot: client,
        lambda: state,
        stream_after=kw.get("stream_after", 0.0),
        updates_per_second=kw.get("ups", 8.0),
    )


async def _stream_text(cards: CardStreams, key: str, words: int, pause: float = 0.02) -> str:
    stream = cards.open("bot", INBOUND, False, key)
    text = ""
    for i in range(words):
        text += f"word{i} "
        await stream.update(text)
        await asyncio.sleep(pause)
    return text


async def test_one_card_paced_updates_and_exactly_one_final(
    api: FakeFeishuAPI, store: SqliteKeyValueStore, http: aiohttp.ClientSession
) -> None:
    cards = streams(api, store, http)
    text = await _stream_text(cards, "sb-k-0", 60)
    message_id = await cards.finalize("bot", INBOUND, False, "sb-k-0", text + "done")
    await cards.close()
    [card] = api.cards()
    assert card.finalized and card.finalize_count == 1 and card.text == text + "done"
    assert card.max_updates_in_window(1.0) <= 10
    [shown] = api.visible_messages(CHAT)
    assert shown.message_id == message_id and shown.text == text + "done"
    sequences = [u.sequence for u in card.updates if u.sequence is not None]
    assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)


async def test_a_quick_answer_never_becomes_a_card(
    api: FakeFeishuAPI, store: SqliteKeyValueStore, http: aiohttp.ClientSession
) -> None:
    cards = streams(api, store, http, stream_after=5.0)
    await _stream_text(cards, "sb-q-0", 3)
    assert await cards.finalize("bot", INBOUND, False, "sb-q-0", "short") is None  # the caller sends it plainly
    await cards.close()
    assert api.cards() == [] and api.visible_messages(CHAT) == []


async def test_after_a_crash_mid_stream_the_same_card_is_finalized_once(
    api: FakeFeishuAPI, store: SqliteKeyValueStore, http: aiohttp.ClientSession
) -> None:
    first = streams(api, store, http)
    await _stream_text(first, "sb-c-0", 20)
    await first.close()  # the process dies: no finalize
    [card] = api.cards()
    assert not card.finalized and len(api.visible_messages(CHAT)) == 1

    restarted = streams(api, store, http)  # new process, same durable state
    await restarted.finalize("bot", INBOUND, False, "sb-c-0", "the full answer")
    await restarted.finalize("bot", INBOUND, False, "sb-c-0", "the full answer")  # an outbox retry
    await restarted.close()
    [card] = api.cards()
    assert card.finalized and card.finalize_count == 1 and card.text == "the full answer"
    assert [m.text for m in api.visible_messages(CHAT)] == ["the full answer"]


async def test_a_card_that_cannot_be_finalized_is_replaced_in_place(
    api: FakeFeishuAPI, store: SqliteKeyValueStore, http: aiohttp.ClientSession
) -> None:
    cards = streams(api, store, http)
    await _stream_text(cards, "sb-r-0", 10)
    api.fail_next("/cardkit/v1/cards/.*/elements/.*/content", code=300309, msg="streaming closed", http_status=400)
    await cards.finalize("bot", INBOUND, False, "sb-r-0", "replacement text")
    await cards.close()
    shown = api.visible_messages(CHAT)
    assert [m.text for m in shown] == ["replacement text"]  # the same message, not a second copy


async def test_without_the_cardkit_permission_a_patched_card_streams_and_is_finalized(
    api: FakeFeishuAPI, store: SqliteKeyValueStore, http: aiohttp.ClientSession
) -> None:
    api.fail_next("/cardkit/v1/cards$", code=99991672, msg="scope missing", http_status=400, times=5)
    cards = streams(api, store, http)
    text = await _stream_text(cards, "sb-p-0", 40, pause=0.03)
    await cards.finalize("bot", INBOUND, False, "sb-p-0", text + "end")
    await cards.close()
    assert api.cards() == []
    [shown] = api.visible_messages(CHAT)
    assert shown.text == text + "end"
    patches = api.requests_to(f"/im/v1/messages/{shown.message_id}$", "PATCH")
    assert len(patches) >= 2  # it really streamed
    gaps = [b.at - a.at for a, b in itertools.pairwise(patches)]
    assert all(g >= 0.2 for g in gaps[:-1])  # under Feishu's 5 patches/s per message (the final is not paced)
