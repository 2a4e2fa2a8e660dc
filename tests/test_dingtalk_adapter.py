"""DingTalk adapter end to end: fake Stream platform + fake OpenAPI -> the real runtime -> replies."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import adapters.dingtalk as dingtalk
from gateway.app import Runtime
from tests.conftest import ENV, make_settings
from tests.fakes.dingtalk_api import APP_KEY, APP_SECRET, FakeDingTalkAPI
from tests.fakes.dingtalk_stream import FakeDingTalkStream
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.webhook_peer import CallbackReceiver

DT_ENV = {**ENV, "DT_SECRET": APP_SECRET}
FAST = {"reconnect_min": 0.05, "reconnect_max": 0.5}
Factory = Callable[..., Any]


@pytest.fixture
def api() -> Any:
    with FakeDingTalkAPI() as fake:
        yield fake


@pytest.fixture
def stream() -> Any:
    with FakeDingTalkStream({APP_KEY: APP_SECRET}, close_after_disconnect=0.5) as fake:
        yield fake


def section(api: FakeDingTalkAPI, stream: FakeDingTalkStream, **bot: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "openapi_base": api.base_url,
        "stream_base": stream.base_url,
        **FAST,
        "bots": {"main": {"client_id": APP_KEY, "client_secret_env": "DT_SECRET", **bot}},
    }


@pytest.fixture
def start(tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver) -> Factory:
    @asynccontextmanager
    async def run(dt: dict[str, Any]) -> AsyncIterator[tuple[Runtime, dingtalk.DingTalkAdapter]]:
        settings = make_settings(tmp_path, fake_llm.base_url, receiver.url, adapters={"dingtalk": dt})
        runtime = Runtime(settings, DT_ENV)
        await runtime.start()
        adapter = runtime.adapters["dingtalk"]
        assert isinstance(adapter, dingtalk.DingTalkAdapter)
        await asyncio.wait_for(runtime.llm_ready.wait(), 60)
        for _ in range(200):
            if adapter.is_connected():
                break
            await asyncio.sleep(0.05)
        assert adapter.is_connected(), "stream connection up"
        try:
            yield runtime, adapter
        finally:
            await runtime.stop()

    return run


async def wait_for(check: Callable[[], Any], seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def inbound_count(runtime: Runtime) -> int:
    rows = await runtime.db.read(lambda c: c.execute("SELECT count(*) FROM inbound").fetchone())
    return int(rows[0])


async def test_dm_over_stream_is_journaled_acked_and_answered_through_the_session_webhook(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        message = api.bot_message("你好")
        [frame_id] = stream.push_bots(APP_KEY, [message])
        [shown] = await wait_for(lambda: api.webhook_messages)
        assert await inbound_count(runtime) == 1
    [ack] = stream.acks(frame_id)
    assert ack.kind == "CALLBACK"
    assert shown.msgtype == "markdown" and shown.text == "echo: 你好" and shown.at_user_ids == ()
    assert stream.violations == []


async def test_groups_answer_only_when_mentioned_and_at_the_asker(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream, fake_llm: FakeLLM
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        quiet = api.bot_message("just chatting", group=True, isInAtList=False, msgId="m-quiet")
        asked = api.bot_message("status?", group=True, msgId="m-asked")
        stream.push_bots(APP_KEY, [quiet, asked])
        [shown] = await wait_for(lambda: api.webhook_messages)
        await asyncio.sleep(0.3)
        assert await inbound_count(runtime) == 1  # the chatter was acked and dropped, never stored
    assert shown.text == "echo: <sender>Alice</sender> status?"
    assert shown.at_user_ids == ("staff001",)
    assert len(fake_llm.chat_requests()) == 1
    assert len(stream.acks(kind="CALLBACK")) == 2


async def test_an_expired_session_webhook_falls_back_to_the_robot_openapi(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)):
        dm = api.bot_message("late DM", ttl=30, msgId="m-dm")  # expires within the 60 s safety margin
        group = api.bot_message("late group", group=True, ttl=30, msgId="m-group")
        stream.push_bots(APP_KEY, [dm, group])
        sent = await wait_for(lambda: api.robot_messages if len(api.robot_messages) == 2 else None)
    by_kind = {m.kind: m for m in sent}
    assert by_kind["batch"].users == ("staff001",) and by_kind["batch"].msg_key == "sampleMarkdown"
    assert by_kind["group"].conversation_id == "cidGroup001=="
    assert json.loads(json.dumps(by_kind["batch"].msg_param))["text"] == "echo: late DM"
    assert api.webhook_messages == []


async def test_a_webhook_refused_at_send_time_is_retried_through_the_openapi_not_dropped(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)):
        api.webhook_error_next(300001, "session 不存在")
        stream.push_bots(APP_KEY, [api.bot_message("hello")])
        [sent] = await wait_for(lambda: api.robot_messages)
    assert sent.kind == "batch" and sent.msg_param["text"] == "echo: hello"
    assert api.webhook_messages == []


async def test_starting_the_same_bot_again_keeps_exactly_one_live_connection(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (_, adapter):
        host = adapter._host
        assert host is not None
        await adapter.start(host)  # e.g. the bot toggled off and on
        await wait_for(adapter.is_connected)
        await asyncio.sleep(0.3)
        assert stream.live(APP_KEY) == 1
        stream.push_bots(APP_KEY, [api.bot_message("once")])
        await wait_for(lambda: api.webhook_messages)
        await asyncio.sleep(0.3)
        assert len(api.webhook_messages) == 1


async def test_server_disconnect_reconnects_without_losing_or_doubling_messages(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        stream.push_bots(APP_KEY, [api.bot_message("before", msgId="m-before")])
        stream.disconnect(APP_KEY)
        await wait_for(lambda: len(stream.tickets_used(APP_KEY)) >= 2)
        stream.push_bots(APP_KEY, [api.bot_message("after", msgId="m-after")])
        shown = await wait_for(lambda: api.webhook_messages if len(api.webhook_messages) >= 2 else None)
        await asyncio.sleep(0.8)  # the old socket is closed by then
        assert stream.live(APP_KEY) == 1
        assert await inbound_count(runtime) == 2
    assert sorted(m.text for m in shown) == ["echo: after", "echo: before"]
    assert len(api.webhook_messages) == 2


async def test_two_robots_in_one_process(start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream) -> None:
    key2, secret2 = "dingappkey0002", "ding-app-secret-second"
    with api._cond:  # a second app of the same organisation on the same OpenAPI
        api.state.apps[key2] = secret2
        api.state.robots[key2] = key2
    stream.apps[key2] = secret2
    stream._conns[key2], stream._opened[key2] = [], []
    dt = section(api, stream)
    dt["bots"]["second"] = {"client_id": key2, "client_secret_env": "DT_SECRET2"}
    DT_ENV["DT_SECRET2"] = secret2
    try:
        async with start(dt):
            stream.push_bots(APP_KEY, [api.bot_message("to one", conversationId="cid-one")])
            stream.push_bots(key2, [api.bot_message("to two", conversationId="cid-two", robotCode=key2)])
            shown = await wait_for(lambda: api.webhook_messages if len(api.webhook_messages) == 2 else None)
            assert stream.live(APP_KEY) == 1 and stream.live(key2) == 1
    finally:
        DT_ENV.pop("DT_SECRET2")
    assert {(m.conversation_id, m.text) for m in shown} == {("cid-one", "echo: to one"), ("cid-two", "echo: to two")}
    assert stream.live(APP_KEY) == 0 and stream.live(key2) == 0  # closed at stop


def _signed(secret: str, timestamp_ms: int) -> dict[str, str]:
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return {
        "timestamp": str(timestamp_ms),
        "sign": base64.b64encode(digest).decode(),
        "Content-Type": "application/json",
    }


async def test_http_mode_accepts_signed_callbacks_and_rejects_forged_or_stale_ones_storing_nothing(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream, inbound="http")) as (runtime, _):
        url = f"http://127.0.0.1:{runtime.port}/webhooks/dingtalk/main"
        now = int(time.time() * 1000)
        async with aiohttp.ClientSession() as http:
            forged = _signed("not-the-secret", now)
            stale = _signed(APP_SECRET, now - 2 * 3600 * 1000)
            for headers in (forged, stale, {"Content-Type": "application/json"}):
                async with http.post(url, json=api.bot_message("evil", msgId="m-evil"), headers=headers) as resp:
                    assert resp.status == 403
            assert await inbound_count(runtime) == 0
            body = api.bot_message("over http", msgId="m-http")
            for _ in range(2):  # a redelivery is a duplicate: one turn, one answer
                async with http.post(url, json=body, headers=_signed(APP_SECRET, now)) as resp:
                    assert resp.status == 200
            [shown] = await wait_for(lambda: api.webhook_messages)
            await asyncio.sleep(0.3)
        assert await inbound_count(runtime) == 1
    assert shown.text == "echo: over http" and len(api.webhook_messages) == 1


async def test_a_burst_of_100_messages_from_20_users_is_acked_fast_and_all_journaled_first(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        messages = [
            api.bot_message(f"n{i}", msgId=f"burst-{i}", senderStaffId=f"u{i % 20}", conversationId=f"cid-u{i % 20}")
            for i in range(100)
        ]
        ids = stream.push_bots(APP_KEY, messages)
        acks = await wait_for(
            lambda: stream.acks(kind="CALLBACK") if len(stream.acks(kind="CALLBACK")) == 100 else None
        )
        stored = await inbound_count(runtime)
    assert stored == 100 and {a.message_id for a in acks} == set(ids)
    latencies = sorted(a.latency for a in acks)
    p50, p99 = statistics.median(latencies), latencies[98]
    print(f"stream ack latency over 100 messages: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    assert max(latencies) < 1.0


async def test_stream_messages_are_journaled_even_while_draining_and_connections_show_in_metrics(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{runtime.port}/metrics") as resp:
            metrics = await resp.text()
        assert 'switchboard_connection_up{adapter="dingtalk",connection="main"} 1.0' in metrics
        assert 'switchboard_connection_events{adapter="dingtalk",connection="main",kind="connects"} 1.0' in metrics
        runtime._accepting = False  # as during a drain: webhooks would get 503, but Stream messages are not redelivered
        [frame_id] = stream.push_bots(APP_KEY, [api.bot_message("during the drain", msgId="m-drain")])
        await wait_for(lambda: stream.acks(frame_id))
        assert await inbound_count(runtime) == 1  # stored, and answered after the restart (resumed from the journal)
        runtime._accepting = True


async def test_a_reply_is_never_redirected_to_the_openapi_when_the_webhook_is_not_dingtalks(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        forged = api.bot_message("hi", msgId="m-foreign", sessionWebhook="https://evil.example.com/robot/send?x=1")
        stream.push_bots(APP_KEY, [forged])
        dead: list[Any] = []
        for _ in range(200):
            dead = await runtime.outbox.dead_letters()
            if dead:
                break
            await asyncio.sleep(0.05)
    assert dead and "not DingTalk's" in dead[0].reason
    assert api.robot_messages == [] and api.webhook_messages == []
