"""DingTalk wire model and conversion: message kinds, sender ids, reply_ref round trip, group policies, fuzz."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from adapters.dingtalk.convert import (
    DEFAULT_TITLE,
    ReplyRef,
    markdown_message,
    parse_reply_ref,
    sample_markdown,
    should_answer,
    title_of,
    to_inbound,
)
from adapters.dingtalk.wire import BotMessage, parse_bot_message
from gateway.messages import Attachment, ChatKind

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
WEBHOOK = "https://oapi.dingtalk.com/robot/sendBySession?session=abc"


def raw(**fields: Any) -> dict[str, Any]:
    """A DM text message as DingTalk sends it (protocols.md B2); `fields` override keys (None removes one)."""
    base: dict[str, Any] = {
        "conversationId": "cidDM==",
        "chatbotCorpId": "dingcorp",
        "chatbotUserId": "$:LWCP_v1:$bot",
        "msgId": "msgABC",
        "senderNick": "Alice",
        "isAdmin": True,
        "senderStaffId": "staff001",
        "sessionWebhookExpiredTime": 1_767_323_045_000,
        "createAt": 1_767_317_645_000,
        "senderCorpId": "dingcorp",
        "conversationType": "1",
        "senderId": "$:LWCP_v1:$alice",
        "isInAtList": False,
        "sessionWebhook": WEBHOOK,
        "text": {"content": "  hello bot  "},
        "robotCode": "dingrobot",
        "msgtype": "text",
        "someFutureField": {"x": 1},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def parse(**fields: Any) -> BotMessage:
    return parse_bot_message(json.dumps(raw(**fields)))


def test_direct_text_message() -> None:
    msg = to_inbound("bot1", parse(), NOW, robot_code="cfgrobot")
    assert msg.platform == "dingtalk" and msg.bot_id == "bot1"
    assert msg.platform_msg_id == "msgABC" and msg.chat_id == "cidDM=="
    assert msg.chat_kind is ChatKind.DIRECT
    assert msg.sender_id == "staff001" and msg.sender_name == "Alice"
    assert msg.text == "hello bot" and msg.attachments == ()
    assert msg.mentioned is False and msg.received_at == NOW


def test_group_message_keeps_mention_flag_and_strips_the_at_space() -> None:
    msg = to_inbound(
        "bot1", parse(conversationType="2", isInAtList=True, text={"content": " 总结一下"}), NOW, robot_code="r"
    )
    assert msg.chat_kind is ChatKind.GROUP and msg.mentioned is True and msg.text == "总结一下"


def test_sender_without_staff_id_uses_sender_id() -> None:
    msg = to_inbound("bot1", parse(senderStaffId=None), NOW, robot_code="r")
    assert msg.sender_id == "$:LWCP_v1:$alice"
    ref = parse_reply_ref(msg.reply_ref)
    assert ref is not None and ref.staff_id == ""


def test_rich_text_is_flattened_with_links_and_pictures_become_attachments() -> None:
    content = {
        "richText": [
            {"text": "see "},
            {"text": "the docs", "href": "https://example.com/d"},
            {"text": "\nand https://example.com/x"},
            {"type": "picture", "downloadCode": "dl-pic", "pictureDownloadCode": "pdl-pic"},
            {"text": " thanks"},
        ]
    }
    msg = to_inbound("b", parse(msgtype="richText", text=None, content=content), NOW, robot_code="r")
    assert msg.text == "see [the docs](https://example.com/d)\nand https://example.com/x thanks"
    assert msg.attachments == (Attachment(kind="image", ref="dl-pic"),)


@pytest.mark.parametrize(
    ("msgtype", "content", "kind", "name"),
    [
        ("picture", {"downloadCode": "dl1", "pictureDownloadCode": "p1"}, "image", ""),
        (
            "file",
            {"downloadCode": "dl2", "fileName": "report.pdf", "spaceId": "1", "fileId": "2"},
            "file",
            "report.pdf",
        ),
        ("video", {"downloadCode": "dl3", "duration": 3, "videoType": "mp4"}, "video", ""),
    ],
)
def test_media_become_attachments_referenced_by_download_code(
    msgtype: str, content: dict[str, Any], kind: str, name: str
) -> None:
    msg = to_inbound("b", parse(msgtype=msgtype, text=None, content=content), NOW, robot_code="r")
    assert msg.text == ""
    assert msg.attachments == (Attachment(kind=kind, ref=content["downloadCode"], name=name),)


def test_audio_uses_dingtalks_recognition_text() -> None:
    content = {"downloadCode": "dl-a", "recognition": " 明天开会吗 ", "duration": 2000}
    msg = to_inbound("b", parse(msgtype="audio", text=None, content=content), NOW, robot_code="r")
    assert msg.text == "明天开会吗"
    assert msg.attachments == (Attachment(kind="audio", ref="dl-a"),)


def test_unknown_types_and_odd_content_are_answered_not_rejected() -> None:
    msg = to_inbound("b", parse(msgtype="chatRecord", text=None, content="not an object"), NOW, robot_code="r")
    assert msg.text == "[unsupported: chatRecord]" and msg.attachments == ()


def test_reply_ref_round_trip_and_robot_code_fallback() -> None:
    msg = to_inbound("b", parse(conversationType="2"), NOW, robot_code="cfgrobot")
    ref = parse_reply_ref(msg.reply_ref)
    assert ref == ReplyRef(WEBHOOK, 1_767_323_045_000, "dingrobot", "cidDM==", "2", "staff001")
    assert ref.is_group
    assert len(msg.reply_ref) < 300
    fallback = parse_reply_ref(to_inbound("b", parse(robotCode=None), NOW, robot_code="cfgrobot").reply_ref)
    assert fallback is not None and fallback.robot_code == "cfgrobot" and not fallback.is_group


def test_webhook_alive_respects_expiry_and_margin() -> None:
    ref = ReplyRef(WEBHOOK, 1_000_000, "r", "c", "1", "s")
    assert ref.webhook_alive(now=900.0, margin=60)
    assert not ref.webhook_alive(now=950.0, margin=60)
    assert not ReplyRef("", 0, "r", "c", "1", "s").webhook_alive(now=0)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "x",
        "[]",
        "null",
        '{"w":1}',
        '{"w":"u","e":-1,"r":"","c":"","t":"1","s":""}',
        '{"w":"u","e":1,"r":"","c":"","t":"3","s":""}',
    ],
)
def test_parse_reply_ref_rejects_garbage(bad: str) -> None:
    assert parse_reply_ref(bad) is None


@pytest.mark.parametrize(
    ("kind", "at", "policy", "overrides", "expected"),
    [
        ("1", False, "mention", {}, True),
        ("2", False, "mention", {}, False),
        ("2", True, "mention", {}, True),
        ("2", False, "all", {}, True),
        ("2", False, "mention", {"cidDM==": "all"}, True),
        ("2", False, "all", {"cidDM==": "mention"}, False),
        ("2", False, "mention", {"otherCid": "all"}, False),
    ],
)
def test_should_answer_policies(kind: str, at: bool, policy: Any, overrides: Any, expected: bool) -> None:
    assert should_answer(parse(conversationType=kind, isInAtList=at), policy, overrides) is expected


def test_markdown_message_and_title() -> None:
    body = markdown_message("## 周报摘要\n\n本周完成了三件事", at_staff_id="staff001")
    assert body == {
        "msgtype": "markdown",
        "markdown": {"title": "周报摘要", "text": "## 周报摘要\n\n本周完成了三件事"},
        "at": {"atUserIds": ["staff001"]},
    }
    assert "at" not in markdown_message("hi")
    assert markdown_message("hi", title="T")["markdown"]["title"] == "T"
    assert title_of("\n\n  > " + "x" * 50) == "x" * 19 + "…"
    assert title_of("   \n") == DEFAULT_TITLE
    assert sample_markdown("**hi**") == ("sampleMarkdown", {"title": "hi", "text": "**hi**"})


@pytest.mark.parametrize(
    "fields",
    [
        {"msgId": None},
        {"msgId": ""},
        {"conversationId": 5},
        {"conversationType": "3"},
        {"senderStaffId": None, "senderId": None},
        {"msgtype": None},
        {"isInAtList": "maybe"},
        {"sessionWebhookExpiredTime": "soon"},
        {"atUsers": "all"},
        {"senderNick": "x" * 300},
        {"text": {"content": "x" * 70_000}},
    ],
)
def test_garbage_fields_are_validation_errors(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse(**fields)


def test_lenient_where_the_platform_varies() -> None:
    msg = parse(conversationType=2, sessionWebhookExpiredTime="1767323045000", senderNick=None, atUsers=None)
    assert msg.conversation_type == "2" and msg.session_webhook_expired_time == 1_767_323_045_000
    assert msg.sender_nick == "" and msg.at_users == ()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from([*raw(), "content", "atUsers", "richText"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.dictionaries(KEYS, JSON, max_size=12), st.binary(max_size=64)))
def test_arbitrary_input_only_ever_raises_validation_error(value: Any) -> None:
    data = value if isinstance(value, bytes) else json.dumps(value)
    with contextlib.suppress(ValidationError):
        parse_bot_message(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, JSON, max_size=12))
def test_mutated_messages_parse_or_fail_cleanly_and_convert(overrides: dict[str, Any]) -> None:
    try:
        msg = parse_bot_message(json.dumps({**raw(), **overrides}))
    except ValidationError:
        return
    inbound = to_inbound("b", msg, NOW, robot_code="r")
    assert parse_reply_ref(inbound.reply_ref) is not None
