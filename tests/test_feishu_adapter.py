"""Feishu adapter end to end: fake open platform + fake long-connection endpoint -> runtime -> replies/cards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import adapters.feishu as feishu
from adapters.feishu.ws import FeishuWsSettings
from gateway.app import Runtime
from tests.conftest import ENV, make_settings
from tests.fakes.fake_llm import DelayReply, FakeLLM
from tests.fakes.feishu_api import APP_ID, APP_SECRET, FakeFeishuAPI
from tests.fakes.feishu_events import group_mention_event, message_event, text_event
from tests.fakes.feishu_ws import FakeFeishuWs
from tests.fakes.webhook_peer import CallbackReceiver

APP2, SECRET2 = "cli_fake_app_0002", "fake-app-secret-2"
FS_ENV = {**ENV, "FS_SECRET": APP_SECRET, "FS_SECRET2": SECRET2}
Factory = Callable[..., Any]
FAST_WS = FeishuWsSettings(connect_timeout=5, ping_interval=1, reconnect_interval=0.2, reconnect_nonce=0)


@pytest.fixture
def api() -> Any:
    with FakeFeishuAPI() as fake:
        fake.add_app(APP2, SECRET2, bot_open_id="ou_fake_bot_0002")
        yield fake


@pytest.fixture
def ws() -> Any:
    with FakeFeishuWs({APP_ID: APP_SECRET, APP2: SECRET2}) as fake:
        yield fake


def section(api: FakeFeishuAPI, ws: FakeFeishuWs, **bot: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "domain": api.base_url,
        "long_connection_domain": ws.domain,
        "bots": {"main": {"app_id": APP_ID, "app_secret_env": "FS_SECRET", **bot}},
    }


@pytest.fixture
def start(tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver) -> Factory:
    @asynccontextmanager
    async def run(fs: dict[str, Any]) -> AsyncIterator[Runtime]:
        settings = make_settings(tmp_path, fake_llm.base_url, receiver.url, adapters={"feishu": fs})
        config = feishu.FeishuConfig.model_validate(fs)
        adapter = feishu.FeishuAdapter(config, feishu.resolve_secrets(config, FS_ENV), ws_settings=FAST_WS)
        runtime = Runtime(settings, FS_ENV, adapters={"feishu": adapter})
        await runtime.start()
        await asyncio.wait_for(runtime.llm_ready.wait(), 60)
        for _ in range(200):
            if adapter.is_connected():
                break
            await asyncio.sleep(0.05)
        assert adapter.is_connected(), "long connection and bot info ready"
        try:
            yield runtime
        finally:
            await runtime.stop()

    return run


def deliver(api: FakeFeishuAPI, ws: FakeFeishuWs, envelope: dict[str, Any], app_id: str = APP_ID) -> str:
    api.add_event(envelope)
    return ws.push(app_id, envelope)


async def test_dm_over_the_long_connection_is_acked_then_answered_by_reply(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs
) -> None:
    async with start(section(api, ws)):
        envelope = text_event("你好")
        event_id = deliver(api, ws, envelope)
        [shown] = await api.async_wait_messages(1)
    [ack] = ws.acks(event_id, APP_ID)
    assert ack.code == 200
    assert shown.text == "echo: 你好" and shown.parent_id == envelope["event"]["message"]["message_id"]


async def test_groups_answer_only_when_mentioned_and_in_the_thread(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs, fake_llm: FakeLLM
) -> None:
    async with start(section(api, ws)):
        quiet = message_event("text", {"text": "just chatting"}, chat_id="oc_group", chat_type="group")
        deliver(api, ws, quiet)
        asked = group_mention_event("status?", chat_id="oc_group", bot_open_id=api.bot_open_id(APP_ID))
        deliver(api, ws, asked)
        [shown] = await api.async_wait_messages(1)
        await asyncio.sleep(0.5)
    assert shown.text.endswith(" status?") and len(fake_llm.chat_requests()) == 1
    [reply] = api.requests_to("/reply")
    assert reply.body.get("reply_in_thread") is True


async def test_a_redelivered_event_starts_no_second_turn(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs, fake_llm: FakeLLM
) -> None:
    async with start(section(api, ws)):
        envelope = text_event("once")
        deliver(api, ws, envelope)
        ws.push(APP_ID, envelope)  # the platform redelivers (e.g. after a reconnect)
        await api.async_wait_messages(1)
        await asyncio.sleep(0.5)
    assert len(fake_llm.chat_requests()) == 1 and len(api.visible_messages()) == 1


async def test_two_feishu_bots_in_one_process(start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs) -> None:
    fs = section(api, ws)
    fs["bots"]["second"] = {"app_id": APP2, "app_secret_env": "FS_SECRET2"}
    async with start(fs):
        deliver(api, ws, text_event("to one", chat_id="oc_one"))
        deliver(api, ws, text_event("to two", chat_id="oc_two", app_id=APP2), app_id=APP2)
        await api.async_wait_messages(2)
    assert {(m.chat_id, m.app_id, m.text) for m in api.visible_messages()} == {
        ("oc_one", APP_ID, "echo: to one"),
        ("oc_two", APP2, "echo: to two"),
    }


async def test_a_slow_answer_streams_into_one_card_finalized_once_despite_token_expiry(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs, fake_llm: FakeLLM
) -> None:
    answer = " ".join(f"word{i}" for i in range(80))
    fake_llm.stream_chunk_chars = 8
    fake_llm.enqueue(DelayReply(0.0, answer))
    async with start(section(api, ws, stream_after=0.0)):
        deliver(api, ws, text_event("tell me a story"))
        for _ in range(100):
            if api.cards():
                break
            await asyncio.sleep(0.05)
        api.expire_all_tokens()
        [card] = api.cards()
        await api.async_wait_card_finalized(card.card_id)
        await asyncio.sleep(0.3)
    [card] = api.cards()
    assert card.finalize_count == 1 and card.text == answer
    assert [m.text for m in api.visible_messages()] == [answer]
    assert api.token_fetches[APP_ID] >= 2
