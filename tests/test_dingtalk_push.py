"""DingTalk: proactive pushes long after the last message, attachment downloads, doctor's credential check."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

import adapters.dingtalk as dingtalk
from gateway.errors import ConfigError
from gateway.messages import ChatKind, MarkdownPart, OutboundMessage, Target
from tests.fakes.dingtalk_api import APP_KEY, APP_SECRET, FakeDingTalkAPI
from tests.fakes.dingtalk_stream import FakeDingTalkStream
from tests.test_dingtalk_adapter import DT_ENV, Factory, api, inbound_count, section, start, stream, wait_for

__all__ = ["api", "start", "stream"]  # fixtures shared with test_dingtalk_adapter


def push(target: Target, text: str, key: str) -> OutboundMessage:
    return OutboundMessage(target=target, parts=(MarkdownPart(text=text),), idempotency_key=key)


async def test_a_scheduled_push_reaches_a_group_and_a_user_without_any_session_webhook(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        stream.push_bots(APP_KEY, [api.bot_message("hi from the group", group=True, conversationId="cid-ops")])
        await wait_for(lambda: api.webhook_messages)
        now = time.time()
        group = Target(platform="dingtalk", bot_id="main", chat_id="cid-ops", chat_kind=ChatKind.GROUP)
        person = Target(
            platform="dingtalk", bot_id="main", chat_id="cid-alice", chat_kind=ChatKind.DIRECT, user_id="staff001"
        )
        await runtime.outbox.enqueue(
            [push(group, "daily report: all green", "push-1"), push(person, "your check passed", "push-2")],
            now=now,
            deadline=now + 3600,
        )
        runtime.sender.wake()
        sent = await wait_for(lambda: api.robot_messages if len(api.robot_messages) == 2 else None)
    by_kind = {m.kind: m for m in sent}
    assert by_kind["group"].conversation_id == "cid-ops" and by_kind["group"].robot_code == APP_KEY
    assert by_kind["group"].msg_param["text"] == "daily report: all green"
    assert by_kind["batch"].users == ("staff001",) and by_kind["batch"].msg_param["text"] == "your check passed"
    assert len(api.webhook_messages) == 1  # the pushes did not go through the (still valid) webhook of another message


async def test_a_push_to_a_flow_controlled_user_is_not_dropped_but_waits_for_a_retry(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        api.flow_control("staff009", times=1)
        now = time.time()
        person = Target(
            platform="dingtalk", bot_id="main", chat_id="cid-bob", chat_kind=ChatKind.DIRECT, user_id="staff009"
        )
        await runtime.outbox.enqueue([push(person, "later", "push-3")], now=now, deadline=now + 3600)
        runtime.sender.wake()
        await asyncio.sleep(0.5)
        assert [m for m in api.robot_messages if "staff009" in m.users] == []  # throttled: not dropped, waiting
        stats = await runtime.outbox.stats()
        assert stats.dead == 0 and stats.pending == 1


async def test_pictures_are_downloaded_into_the_attachment_store_with_a_size_cap(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    api.add_file("dl-small", b"\x89PNG small picture", "image/png")
    api.add_file("dl-big", b"x" * 5000, "image/png")
    async with start({**section(api, stream), "max_attachment_bytes": 1000}) as (runtime, _):
        small = api.bot_message("", msgtype="picture", content={"downloadCode": "dl-small"}, msgId="m-pic1")
        big = api.bot_message("", msgtype="picture", content={"downloadCode": "dl-big"}, msgId="m-pic2")
        stream.push_bots(APP_KEY, [small, big])
        await wait_for(lambda: api.webhook_messages if len(api.webhook_messages) == 2 else None)
        store = runtime.attachments
        stored = None
        for _ in range(200):
            stored = await store.find("dingtalk:main:dl-small")
            if stored is not None:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert stored is not None and stored.read_bytes() == b"\x89PNG small picture"
        assert await store.find("dingtalk:main:dl-big") is None  # over the cap: not stored
        assert await inbound_count(runtime) == 2


async def test_doctor_probe_fetches_each_robots_token_and_names_a_wrong_secret(api: FakeDingTalkAPI) -> None:
    cfg: dict[str, Any] = {
        "enabled": True,
        "openapi_base": api.base_url,
        "bots": {
            "good": {"client_id": APP_KEY, "client_secret_env": "DT_SECRET"},
            "bad": {"client_id": "dingappkey-unknown", "client_secret_env": "DT_WRONG"},
        },
    }
    adapter = dingtalk.create(cfg, {**DT_ENV, "DT_WRONG": APP_SECRET + "-wrong"})
    async with aiohttp.ClientSession() as http:
        result = await adapter.check_credentials(http)
    assert result["good"] == ""
    assert "invalid" in result["bad"].lower()


def test_two_entries_for_one_app_are_refused_with_the_key_path() -> None:
    bots = {"a": {"client_id": APP_KEY, "client_secret_env": "DT_SECRET"}}
    bots["b"] = dict(bots["a"])
    with pytest.raises(ConfigError, match="same client_id"):
        dingtalk.create({"enabled": True, "bots": bots}, DT_ENV)


async def test_a_push_to_a_user_known_only_by_the_opaque_sender_id_says_why_it_cannot_be_sent(
    start: Factory, api: FakeDingTalkAPI, stream: FakeDingTalkStream
) -> None:
    async with start(section(api, stream)) as (runtime, _):
        now = time.time()
        person = Target(  # a sender without a staffId: sender_id is DingTalk's opaque senderId
            platform="dingtalk", bot_id="main", chat_id="cid-ext", chat_kind=ChatKind.DIRECT, user_id="$:LWCP_v1:$x9"
        )
        await runtime.outbox.enqueue([push(person, "hello", "push-4")], now=now, deadline=now + 3600)
        runtime.sender.wake()
        for _ in range(500):
            if dead := await runtime.outbox.dead_letters():
                break
            await asyncio.sleep(0.02)
    [letter] = dead
    assert "no staffId" in letter.reason
    assert api.robot_messages == []  # the opaque id was never sent to batchSend as a userId
