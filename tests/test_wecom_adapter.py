"""WeCom adapter end to end: self-built app callbacks + message/send, and AI bots over the long connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import adapters.wecom as wecom
from adapters.wecom.pacing import MemberPacer
from gateway.app import Runtime
from tests.conftest import ENV, make_settings
from tests.fakes.fake_llm import ErrorReply, FakeLLM
from tests.fakes.webhook_peer import CallbackReceiver
from tests.fakes.wechat_driver import CallbackDriver, Forgery
from tests.fakes.wechat_platform import (
    WECOM_AES_KEY,
    WECOM_AGENT_ID,
    WECOM_CORPID,
    WECOM_SECRET,
    WECOM_TOKEN,
    WECOM_USERID,
    FakeWeChatAPI,
    oversized_body,
    xml_bomb,
)
from tests.fakes.wecom_aibot_server import FakeAIBotServer, eventually, text_callback

WECOM_ENV = {**ENV, "WC_SECRET": WECOM_SECRET, "WC_TOKEN": WECOM_TOKEN, "WC_AES": WECOM_AES_KEY, "AI_SECRET": "ai-s3"}
Factory = Callable[..., Any]


def section(api_base: str, ws_url: str = "ws://127.0.0.1:9/", **bots: dict[str, Any]) -> dict[str, Any]:
    return {"enabled": True, "api_base": api_base, "ws_url": ws_url, "bots": bots}


APP_BOT = {
    "kind": "app",
    "corp_id": WECOM_CORPID,
    "agent_id": WECOM_AGENT_ID,
    "secret_env": "WC_SECRET",
    "token_env": "WC_TOKEN",
    "encoding_aes_key_env": "WC_AES",
}


@pytest.fixture
def wx_api() -> Any:
    with FakeWeChatAPI() as api:
        yield api


@pytest.fixture
def start(tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver) -> Factory:
    @asynccontextmanager
    async def run(wc: dict[str, Any], pacer: MemberPacer | None = None) -> AsyncIterator[tuple[Runtime, str]]:
        settings = make_settings(tmp_path, fake_llm.base_url, receiver.url, adapters={"wecom": wc})
        config = wecom.WeComConfig.model_validate(wc)
        adapter = wecom.WeComAdapter(config, wecom.resolve_secrets(config, WECOM_ENV), pacer=pacer)
        runtime = Runtime(settings, WECOM_ENV, adapters={"wecom": adapter})
        await runtime.start()
        await asyncio.wait_for(runtime.llm_ready.wait(), 60)
        try:
            yield runtime, f"http://127.0.0.1:{runtime.port}/webhooks/wecom/hr"
        finally:
            await runtime.stop()

    return run


async def _stored(rt: Runtime) -> int:
    return len(await rt.journal.pending()) + (await rt.outbox.stats()).pending


async def test_app_url_verification_decrypts_the_echostr(start: Factory, wx_api: FakeWeChatAPI) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (_, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        assert (await driver.verify_url()).verified
        assert (await driver.verify_url(forge=Forgery(bad_msg_signature=True))).status == 403


async def test_app_message_is_acked_at_once_and_answered_by_message_send(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (_, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        result = await driver.send_text(WECOM_USERID, "周报写好了吗")
        assert result.acked and result.attempt_count == 1 and result.last.elapsed < 3.0  # acked before any turn work
        [delivered] = await wx_api.async_wait_delivered(1)
    assert delivered.content == "echo: 周报写好了吗" and delivered.touser == WECOM_USERID
    assert delivered.payload["enable_duplicate_check"] == 1 and delivered.payload["agentid"] == WECOM_AGENT_ID
    assert len(fake_llm.chat_requests()) == 1


async def test_an_app_video_message_is_journaled_and_answered(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (_, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        result = await driver.send_video(WECOM_USERID, media_id="vid-9", thumb_media_id="thumb-9")
        assert result.acked
        [delivered] = await wx_api.async_wait_delivered(1)
    assert delivered.content == "echo: [video attachment: vid-9]" and delivered.touser == WECOM_USERID
    assert len(fake_llm.chat_requests()) == 1


async def test_an_app_menu_click_is_a_turn_once_and_other_events_are_none(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (_, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        entered = await driver.send_event(WECOM_USERID, "enter_agent")
        stamp = int(time.time())
        clicks = [
            await driver.send_event(WECOM_USERID, "click", event_key="DAILY_REPORT", create_time=stamp) for _ in "12"
        ]
        assert entered.acked and all(c.acked for c in clicks)
        [delivered] = await wx_api.async_wait_delivered(1)
        await asyncio.sleep(0.3)
    assert delivered.content == "echo: [菜单] DAILY_REPORT" and delivered.touser == WECOM_USERID
    assert len(fake_llm.chat_requests()) == 1  # the redelivered click (same CreateTime) is the same message


async def test_an_app_message_arriving_while_draining_is_journaled_not_refused(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    # WeCom retries a callback only 3 times within seconds, less than a drain lasts: a 503 would lose it.
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (rt, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        rt._accepting = False  # what stop() does first, while turns drain
        result = await driver.send_text(WECOM_USERID, "during the deploy")
        [entry] = await rt.journal.pending()
    assert result.acked and result.attempt_count == 1
    assert entry.message.text == "during the deploy" and fake_llm.chat_requests() == []  # its turn waits for restart


async def test_platform_retries_of_an_app_message_start_no_second_turn(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (_, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        request = driver.build_post(driver.message_fields(WECOM_USERID, "text", [("Content", "once")]))
        results = await asyncio.gather(*(driver.deliver(request, retries=0) for _ in range(4)))
        assert all(r.acked for r in results)
        await wx_api.async_wait_delivered(1)
        await asyncio.sleep(0.5)
    assert len(wx_api.sends) == 1 and len(fake_llm.chat_requests()) == 1


async def test_a_signed_message_with_malformed_fields_is_a_400_not_a_crash(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (rt, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        fields = driver.message_fields(WECOM_USERID, "text", [("Content", "hi")])
        fields["MsgId"] = "not-a-number"  # correctly signed and encrypted, but not what WeCom sends
        bad = await driver.deliver(driver.build_post(fields), retries=0)
        assert bad.status == 400 and await _stored(rt) == 0
        no_id = driver.message_fields(WECOM_USERID, "text", [("Content", "hi")])
        del no_id["MsgId"]  # wechatpy reads it as 0: every such message would be a duplicate of the first
        assert (await driver.deliver(driver.build_post(no_id), retries=0)).status == 400
        assert await _stored(rt) == 0
        assert (await driver.send_text(WECOM_USERID, "fine")).acked  # still serving
        await wx_api.async_wait_delivered(1)
    assert len(fake_llm.chat_requests()) == 1


async def test_replies_above_the_per_member_limit_are_paced_not_dropped(start: Factory, wx_api: FakeWeChatAPI) -> None:
    wx_api.wecom_per_minute = 3
    pacer = MemberPacer(windows=((60.0, 3),), clock=wx_api.now)  # the platform's clock, which the test moves
    async with start(section(wx_api.base_url, hr=APP_BOT), pacer=pacer) as (rt, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        for i in range(5):
            assert (await driver.send_text(WECOM_USERID, f"m{i}")).acked
        await wx_api.async_wait_delivered(3)
        await asyncio.sleep(1.0)
        assert len(wx_api.sends) == 3 and (await rt.outbox.stats()).pending == 2  # held back, not sent
        wx_api.advance(61)
        await wx_api.async_wait_delivered(5)
    assert wx_api.dropped == [] and wx_api.texts(WECOM_USERID) == [f"echo: m{i}" for i in range(5)]


async def test_an_expired_app_token_is_refreshed_once(start: Factory, wx_api: FakeWeChatAPI) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (_, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        await driver.send_text(WECOM_USERID, "a")
        await wx_api.async_wait_delivered(1)
        wx_api.expire_all_tokens()
        await driver.send_text(WECOM_USERID, "b")
        await wx_api.async_wait_delivered(2)
    assert wx_api.texts(WECOM_USERID) == ["echo: a", "echo: b"]
    assert sum(wx_api.token_fetches.values()) == 2


async def test_a_long_answer_is_split_into_2048_byte_messages(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue("第一段内容。" * 400)
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (_, url):
        await CallbackDriver.wecom(url, api=wx_api).send_text(WECOM_USERID, "long")
        delivered = await wx_api.async_wait_delivered(4)  # 7,200 bytes
    assert all(not d.truncated and len((d.content or "").encode()) <= 2048 for d in delivered)
    assert [(d.content or "")[:5] for d in delivered] == ["(1/4)", "(2/4)", "(3/4)", "(4/4)"]


@pytest.mark.parametrize(
    ("forge", "status"),
    [
        (Forgery(bad_msg_signature=True), 403),
        (Forgery(receive_id="ww_other_corp"), 403),
        (Forgery(timestamp="1000000000"), 403),
        (Forgery(raw_plaintext=xml_bomb()), 400),
        (Forgery(raw_body=oversized_body(200_000)), 413),
    ],
)
async def test_forged_app_callbacks_are_rejected_and_nothing_is_stored(
    start: Factory, wx_api: FakeWeChatAPI, fake_llm: FakeLLM, forge: Forgery, status: int
) -> None:
    async with start(section(wx_api.base_url, hr=APP_BOT)) as (rt, url):
        driver = CallbackDriver.wecom(url, api=wx_api)
        bad = await driver.send_text(WECOM_USERID, "evil", forge=forge)
        assert bad.status == status and await _stored(rt) == 0
        assert (await driver.send_text(WECOM_USERID, "fine")).acked
        await wx_api.async_wait_delivered(1)
    assert len(fake_llm.chat_requests()) == 1


@pytest.fixture
def aibot_server() -> Any:
    with FakeAIBotServer(bot_id="aibot-1", secret="ai-s3") as server:
        yield server


AI_BOT = {"kind": "aibot", "bot_id": "aibot-1", "secret_env": "AI_SECRET"}


async def test_aibot_answer_streams_and_ends_with_finish(
    start: Factory, aibot_server: FakeAIBotServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue("a streamed answer that arrives in several chunks")
    async with start(section("http://127.0.0.1:9", aibot_server.url, helper=AI_BOT)) as (rt, _):
        await eventually(lambda: aibot_server.has_client, what="subscribed")
        await eventually(rt.adapters["wecom"].is_connected, what="connected")
        req_id = aibot_server.push(text_callback("stream please", aibotid="aibot-1"))
        await eventually(lambda: any(f.stream.get("finish") for f in aibot_server.frames(req_id=req_id)), within=20)
    frames = [f for f in aibot_server.frames(cmd="aibot_respond_msg", req_id=req_id)]
    assert frames[-1].stream == {**frames[-1].stream, "finish": True}
    assert frames[-1].stream["content"] == "a streamed answer that arrives in several chunks"
    assert len({f.stream["id"] for f in frames}) == 1 and aibot_server.errors == []
    assert fake_llm.chat_requests()[0].body.get("stream") is True


async def test_aibot_stream_is_finished_with_an_honest_message_after_an_llm_error(
    start: Factory, aibot_server: FakeAIBotServer, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(ErrorReply(500, "model exploded"))
    async with start(section("http://127.0.0.1:9", aibot_server.url, helper=AI_BOT)) as (rt, _):
        await eventually(rt.adapters["wecom"].is_connected, what="connected")
        req_id = aibot_server.push(text_callback("hello", aibotid="aibot-1"))
        await eventually(lambda: any(f.stream.get("finish") for f in aibot_server.frames(req_id=req_id)), within=20)
    last = aibot_server.frames(req_id=req_id)[-1].stream
    assert last["finish"] is True and last["content"] and "Traceback" not in last["content"]
    assert aibot_server.errors == []


def test_messages_are_built_from_the_safely_parsed_fields() -> None:
    from adapters.wecom.app import message_from
    from adapters.wxcommon.xml import CallbackRejected

    base = {"ToUserName": "corp", "FromUserName": "zhangsan", "CreateTime": "1700000000", "AgentID": "1000002"}
    text = message_from({**base, "MsgType": "text", "Content": "hi", "MsgId": "1"})
    assert (text.type, text.content, text.source, text.agent) == ("text", "hi", "zhangsan", 1000002)
    image = message_from({**base, "MsgType": "image", "PicUrl": "http://p", "MediaId": "m", "MsgId": "2"})
    assert (image.type, image.media_id) == ("image", "m")
    event = message_from({**base, "MsgType": "event", "Event": "enter_agent"})
    assert event.type == "event"
    assert message_from({**base, "MsgType": "holo", "MsgId": "3"}).type == "unknown"
    with pytest.raises(CallbackRejected):
        message_from(base)
