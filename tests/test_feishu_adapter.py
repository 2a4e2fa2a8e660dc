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
ENCRYPT_KEY = "fake-encrypt-key-0123"
TOKEN = "fake-verification-token"
FS_ENV = {**ENV, "FS_SECRET": APP_SECRET, "FS_SECRET2": SECRET2, "FS_TOKEN": TOKEN, "FS_KEY": ENCRYPT_KEY}
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


async def settled(api: FakeFeishuAPI, n: int) -> list[Any]:
    """The first `n` visible answers once final (a slow answer is a streaming card until finalized)."""

    def done() -> list[Any] | None:
        shown = api.visible_messages()
        return shown if len(shown) >= n and all(m.finalized is not False for m in shown) else None

    return await api.async_wait_for(done, 20)


def deliver(api: FakeFeishuAPI, ws: FakeFeishuWs, envelope: dict[str, Any], app_id: str = APP_ID) -> str:
    api.add_event(envelope)
    return ws.push(app_id, envelope)


async def test_dm_over_the_long_connection_is_acked_then_answered_by_reply(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs
) -> None:
    async with start(section(api, ws)):
        envelope = text_event("你好")
        event_id = deliver(api, ws, envelope)
        [shown] = await settled(api, 1)
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
        [shown] = await settled(api, 1)
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
        await settled(api, 1)
        await asyncio.sleep(0.5)
    assert len(fake_llm.chat_requests()) == 1 and len(api.visible_messages()) == 1


async def test_one_message_pushed_again_as_a_new_event_is_answered_once(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs, fake_llm: FakeLLM
) -> None:
    async with start(section(api, ws)):
        first = text_event("once", message_id="om_dup", event_id="ev_first")
        again = text_event("once", message_id="om_dup", event_id="ev_again")  # Feishu's "special case" re-push
        deliver(api, ws, first)
        await settled(api, 1)
        acked = deliver(api, ws, again)
        await asyncio.sleep(0.5)
    [ack] = ws.acks(acked, APP_ID)
    assert ack.code == 200  # acked (it is journaled already), not refused into redelivery
    assert len(fake_llm.chat_requests()) == 1 and len(api.visible_messages()) == 1


async def test_two_feishu_bots_in_one_process(start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs) -> None:
    fs = section(api, ws)
    fs["bots"]["second"] = {"app_id": APP2, "app_secret_env": "FS_SECRET2"}
    async with start(fs):
        deliver(api, ws, text_event("to one", chat_id="oc_one"))
        deliver(api, ws, text_event("to two", chat_id="oc_two", app_id=APP2), app_id=APP2)
        await settled(api, 2)
    assert {(m.chat_id, m.app_id, m.text) for m in api.visible_messages()} == {
        ("oc_one", APP_ID, "echo: to one"),
        ("oc_two", APP2, "echo: to two"),
    }


async def test_a_slow_answer_streams_into_one_card_finalized_once_despite_token_expiry(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs, fake_llm: FakeLLM
) -> None:
    answer = " ".join(f"word{i}" for i in range(80))
    fake_llm.stream_chunk_chars = 8
    fake_llm.stream_chunk_delay = 0.03  # ~2.5 s of streaming: the token expires in the middle
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
    assert len(card.updates) >= 2 and card.max_updates_in_window(1.0) <= 10  # streamed, within Feishu's limit
    assert [m.text for m in api.visible_messages()] == [answer]
    assert api.token_fetches[APP_ID] >= 2


def webhook_section(api: FakeFeishuAPI) -> dict[str, Any]:
    return {
        "enabled": True,
        "domain": api.base_url,
        "bots": {
            "hook": {
                "app_id": APP_ID,
                "app_secret_env": "FS_SECRET",
                "inbound": "webhook",
                "verification_token_env": "FS_TOKEN",
                "encrypt_key_env": "FS_KEY",
            }
        },
    }


async def test_encrypted_callbacks_are_verified_and_forgeries_store_nothing(
    start: Factory, api: FakeFeishuAPI, fake_llm: FakeLLM
) -> None:
    from tests.fakes.feishu_callback import FeishuCallbackDriver, Forgery

    async with start(webhook_section(api)) as rt:
        url = f"http://127.0.0.1:{rt.port}/webhooks/feishu/hook"
        driver = FeishuCallbackDriver(url, encrypt_key=ENCRYPT_KEY, verification_token=TOKEN, app_id=APP_ID)
        assert (await driver.verify_url("c-123")).last.status == 200
        envelope = text_event("over http")
        envelope["header"]["token"] = TOKEN
        api.add_event(envelope)
        for forge in (Forgery(bad_signature=True), Forgery(token="wrong"), Forgery(timestamp="1000000000")):
            bad = await driver.send(envelope, forge=forge, retry_schedule=())
            assert bad.last.status in (400, 401, 403)
        assert await rt.journal.pending() == [] and fake_llm.chat_requests() == []
        good = await driver.send(envelope, retry_schedule=())
        assert good.last.status == 200
        [shown] = await settled(api, 1)
    assert shown.text == "echo: over http"


async def test_an_old_format_message_event_is_acked_with_a_warning_once_not_silently(
    start: Factory, api: FakeFeishuAPI, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.fakes.feishu_callback import FeishuCallbackDriver

    async with start(webhook_section(api)) as rt:
        url = f"http://127.0.0.1:{rt.port}/webhooks/feishu/hook"
        driver = FeishuCallbackDriver(url, encrypt_key=ENCRYPT_KEY, verification_token=TOKEN, app_id=APP_ID)
        for n in range(2):
            doc = {"uuid": f"u-{n}", "token": TOKEN, "ts": "1700000000.1", "type": "event_callback"}
            doc["event"] = {"type": "message", "msg_type": "text", "text": "hi", "open_id": "ou_old"}
            assert (await driver.send(doc, retry_schedule=())).last.status == 200
    warnings = [r for r in caplog.records if "old-format (v1) message event" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert fake_llm.chat_requests() == []


async def test_images_and_files_are_downloaded_into_the_attachment_store_with_a_size_cap(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs, fake_llm: FakeLLM
) -> None:
    from tests.fakes.feishu_events import file_event, image_event

    fs = section(api, ws)
    fs["max_attachment_bytes"] = 2_000_000
    async with start(fs) as rt:
        image = image_event("img_small")
        big = file_event("file_big", "dump.bin")
        api.add_event(image)
        api.add_event(big)
        image_id = image["event"]["message"]["message_id"]
        big_id = big["event"]["message"]["message_id"]
        photo = b"\x89PNG" + bytes(range(256)) * 4096  # ~1 MB: arrives in many chunks
        api.add_resource(image_id, "img_small", photo, kind="image", content_type="image/png")
        api.add_resource(big_id, "file_big", b"x" * 3_000_000, kind="file", content_type="application/octet-stream")
        api.fail_next("/resources/img_small", http_status=503)  # a blip: the download is retried
        ws.push(APP_ID, image)
        ws.push(APP_ID, big)
        await settled(api, 2)
        store = rt.attachments
        for _ in range(100):
            if await store.find(f"feishu:main:{image_id}:img_small"):
                break
            await asyncio.sleep(0.05)
        saved = await store.find(f"feishu:main:{image_id}:img_small")
        assert saved is not None and saved.read_bytes() == photo
        assert await store.find(f"feishu:main:{big_id}:file_big") is None  # over the cap: not stored
        assert [r.status for r in api.requests_to("/resources/img_small")] == [503, 200]
    assert "[image attachment" in fake_llm.chat_requests()[0].messages[-1]["content"]


async def test_an_unusable_event_is_acked_and_dropped_not_redelivered_forever(
    start: Factory, api: FakeFeishuAPI, ws: FakeFeishuWs, fake_llm: FakeLLM
) -> None:
    async with start(section(api, ws)):
        broken = text_event("x")
        del broken["event"]["message"]["chat_id"]
        malformed = ws.push(APP_ID, broken)
        deliver(api, ws, text_event("still fine"))
        await settled(api, 1)
    assert [a.code for a in ws.acks(malformed, APP_ID)] == [200]
    assert len(fake_llm.chat_requests()) == 1
