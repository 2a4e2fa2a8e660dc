"""Feishu event → InboundMessage conversion (pure): content formats, mentions, threads, ignored events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from adapters.feishu.callback import FeishuCallbackRejected
from adapters.feishu.convert import should_answer, split_reply_ref, thread_of, to_inbound
from gateway.messages import Attachment, ChatKind, InboundMessage
from tests.fakes.feishu_callback import FeishuCallbackDriver

BOT = "ou_bot"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DRIVER = FeishuCallbackDriver("http://unused", encrypt_key=None, verification_token="vt")
M_BOT = DRIVER.mention(1, BOT, "Switchboard")
M_ALICE = DRIVER.mention(2, "ou_alice", "Alice")
M_BOB10 = DRIVER.mention(10, "ou_bob", "Bob")


def convert(envelope: dict[str, Any]) -> InboundMessage | None:
    return to_inbound("fs1", envelope, bot_open_id=BOT, received_at=NOW)


def must(envelope: dict[str, Any]) -> InboundMessage:
    msg = convert(envelope)
    assert msg is not None
    return msg


TEXT_CASES = [
    ("plain", "hello", (), "hello", False),
    ("bot mention removed", "@_user_1 what time is it", (M_BOT,), "what time is it", True),
    ("bot mention mid-text", "hey @_user_1 please", (M_BOT,), "hey please", True),
    ("other mention named", "@_user_2 look", (M_ALICE,), "@Alice look", False),
    ("both", "@_user_1 ask @_user_2 and @_user_10", (M_BOT, M_ALICE, M_BOB10), "ask @Alice and @Bob", True),
    ("@all", "@_all meeting", (), "@all meeting", False),
    ("unknown placeholder kept", "@_user_7 hi", (), "@_user_7 hi", False),
    ("name with regex chars", "@_user_2 x", ({**M_ALICE, "name": r"A\1 (b)*"},), r"@A\1 (b)* x", False),
]


@pytest.mark.parametrize(
    ("text", "mentions", "expected", "mentioned"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_text_messages_resolve_mentions(
    text: str, mentions: tuple[dict[str, Any], ...], expected: str, mentioned: bool
) -> None:
    msg = must(DRIVER.text_event(text, chat_type="group", mentions=mentions))
    assert msg.text == expected
    assert msg.mentioned is mentioned


def test_text_message_fields() -> None:
    env = DRIVER.text_event(
        "hi", chat_type="p2p", message_id="om_1", chat_id="oc_9", sender_open_id="ou_u", event_id="ev1"
    )
    msg = must(env)
    assert (msg.platform, msg.bot_id, msg.platform_msg_id) == ("feishu", "fs1", "om_1")
    assert (msg.chat_id, msg.chat_kind, msg.sender_id, msg.sender_name) == ("oc_9", ChatKind.DIRECT, "ou_u", "")
    assert (msg.reply_ref, msg.received_at, msg.attachments) == ("om_1", NOW, ())
    assert msg.gateway_id == "feishu/fs1/om_1"


def test_redelivery_keeps_the_dedup_key() -> None:
    env = DRIVER.text_event("hi")
    assert must(env).platform_msg_id == must(json.loads(json.dumps(env))).platform_msg_id


def test_the_same_message_pushed_as_a_new_event_keeps_the_dedup_key() -> None:
    # Feishu's receive-event page: duplicate pushes can happen; dedupe by message_id, not event_id.
    first = DRIVER.text_event("hi", message_id="om_7", event_id="ev_a")
    again = DRIVER.text_event("hi", message_id="om_7", event_id="ev_b")
    other = DRIVER.text_event("hi", message_id="om_8", event_id="ev_a")
    assert must(first).platform_msg_id == must(again).platform_msg_id == "om_7"
    assert must(other).platform_msg_id == "om_8"


def test_a_lone_surrogate_in_the_text_is_replaced_so_the_message_can_be_journaled() -> None:
    # JSON allows an unpaired "\\ud800" escape and json.loads keeps it; UTF-8 (the journal, the reply) does not.
    env = json.loads(json.dumps(DRIVER.text_event("a\ud800b", sender_open_id="ou_\udc01")))
    msg = must(env)
    assert (msg.text, msg.sender_id) == ("a\ufffdb", "ou_\ufffd")
    assert InboundMessage.model_validate_json(msg.model_dump_json()) == msg  # what the journal does


def test_a_receive_event_without_a_message_id_is_rejected() -> None:
    env = DRIVER.text_event("hi")
    env["event"]["message"]["message_id"] = ""
    with pytest.raises(FeishuCallbackRejected):
        must(env)


def test_sender_name_only_when_the_sender_is_among_the_mentions() -> None:
    env = DRIVER.text_event("@_user_2 me", sender_open_id="ou_alice", mentions=[M_ALICE])
    assert must(env).sender_name == "Alice"


@pytest.mark.parametrize(
    ("chat_type", "mentions", "policy", "answer"),
    [
        ("p2p", (), "mention", True),
        ("group", (M_BOT,), "mention", True),
        ("group", (M_ALICE,), "mention", False),
        ("group", (), "mention", False),
        ("group", (), "all", True),
    ],
)
def test_should_answer(chat_type: str, mentions: tuple[dict[str, Any], ...], policy: Any, answer: bool) -> None:
    text = " ".join(m["key"] for m in mentions) + " hi"
    msg = must(DRIVER.text_event(text, chat_type=chat_type, mentions=mentions))
    assert msg.chat_kind is (ChatKind.DIRECT if chat_type == "p2p" else ChatKind.GROUP)
    assert should_answer(msg, group_policy=policy) is answer


def test_empty_bot_open_id_never_counts_as_mentioned() -> None:
    env = DRIVER.text_event("@_user_1 hi", chat_type="group", mentions=[{**M_BOT, "id": {"open_id": ""}}])
    msg = to_inbound("fs1", env, bot_open_id="", received_at=NOW)
    assert msg is not None and msg.mentioned is False


POST = {
    "title": "Weekly",
    "content": [
        [
            {"tag": "at", "user_id": "@_user_1", "user_name": "Switchboard"},
            {"tag": "text", "text": " please read "},
            {"tag": "a", "text": "the doc", "href": "https://example.com/d"},
            {"tag": "text", "text": " with "},
            {"tag": "at", "user_id": "@_user_2", "user_name": "Alice"},
            {"tag": "emotion", "emoji_type": "SMILE"},
        ],
        [{"tag": "img", "image_key": "img_v3_1", "width": 10, "height": 10}],
        [{"tag": "text", "text": "code:"}, {"tag": "code_block", "language": "PYTHON", "text": "print(1)\n"}],
        [{"tag": "hr"}],
        [{"tag": "a", "href": "https://bare.example"}, {"tag": "media", "file_key": "file_v3_9", "image_key": "img_c"}],
        [{"tag": "at", "user_id": "all"}, {"tag": "unknown_future_tag", "text": " new"}, "junk", {"tag": None}],
    ],
}
POST_TEXT = (
    "Weekly\nplease read the doc (https://example.com/d) with @Alice:SMILE:\n[image]\ncode:\n"
    "```python\nprint(1)\n```\n---\nhttps://bare.example[video]\n@all new"
)


@pytest.mark.parametrize(
    "content",
    [POST, {"zh_cn": POST}, {"en_us": POST, "ja_jp": {"title": "x"}}, {"post": {"zh_cn": POST}}, {"fr_fr": POST}],
    ids=["flat", "zh_cn", "en_us", "post-wrapped", "other-locale"],
)
def test_post_becomes_readable_text(content: dict[str, Any]) -> None:
    msg = must(DRIVER.message_event("post", content, message_id="om_p", chat_type="group", mentions=[M_BOT, M_ALICE]))
    assert msg.text == POST_TEXT
    assert msg.mentioned
    assert msg.attachments == (
        Attachment(kind="image", ref="om_p:img_v3_1"),
        Attachment(kind="video", ref="om_p:file_v3_9"),
    )


def test_post_at_by_open_id_and_empty_post() -> None:
    content = {"content": [[{"tag": "at", "user_id": "ou_alice", "user_name": "A"}, {"tag": "at", "user_id": BOT}]]}
    assert must(DRIVER.message_event("post", content, mentions=[M_ALICE])).text == "@Alice"
    assert must(DRIVER.message_event("post", {"zh_cn": {"title": "", "content": []}})).text == ""


MEDIA_CASES = [
    ("image", {"image_key": "img_1"}, Attachment(kind="image", ref="om_m:img_1")),
    (
        "file",
        {"file_key": "file_1", "file_name": "report.pdf"},
        Attachment(kind="file", ref="om_m:file_1", name="report.pdf"),
    ),
    ("audio", {"file_key": "file_a", "duration": 3000}, Attachment(kind="audio", ref="om_m:file_a")),
    (
        "media",
        {"file_key": "file_v", "image_key": "img_c", "file_name": "clip.mp4", "duration": 5},
        Attachment(kind="video", ref="om_m:file_v", name="clip.mp4"),
    ),
]


@pytest.mark.parametrize(("message_type", "content", "attachment"), MEDIA_CASES, ids=[c[0] for c in MEDIA_CASES])
def test_media_messages_become_attachments(message_type: str, content: dict[str, Any], attachment: Attachment) -> None:
    msg = must(DRIVER.message_event(message_type, content, message_id="om_m"))
    assert (msg.text, msg.attachments) == ("", (attachment,))


@pytest.mark.parametrize("message_type", ["sticker", "interactive", "share_chat", "location", "merge_forward"])
def test_unsupported_types_become_a_short_marker(message_type: str) -> None:
    msg = must(DRIVER.message_event(message_type, {"file_key": "x"}))
    assert (msg.text, msg.attachments) == (f"[unsupported: {message_type}]", ())


def test_messages_from_apps_are_ignored() -> None:
    assert convert(DRIVER.text_event("echo", sender_type="app", sender_open_id=BOT)) is None  # ourselves
    assert convert(DRIVER.text_event("echo", sender_type="app", sender_open_id="ou_other_bot")) is None


@pytest.mark.parametrize(
    "envelope",
    [
        DRIVER.recall_event("om_1"),
        DRIVER.envelope("im.message.message_read_v1", {"reader": {"reader_id": {"open_id": "ou_u"}}}),
        DRIVER.envelope("im.chat.member.bot.added_v1", {"chat_id": "oc_1"}),
        DRIVER.envelope("im.message.reaction.created_v1", {"message_id": "om_1"}),
        {"uuid": "u1", "token": "vt", "ts": "1", "type": "event_callback", "event": {"type": "message"}},
        {"schema": "2.0", "header": {"event_type": "im.message.recalled_v1"}},
    ],
    ids=["recalled", "read", "chat", "reaction", "v1", "bare-header"],
)
def test_other_events_are_ignored(envelope: dict[str, Any]) -> None:
    assert convert(envelope) is None


def test_threads_and_reply_refs() -> None:
    topic = DRIVER.text_event("t", message_id="om_t", thread_id="omt_1", root_id="om_root")
    quote = DRIVER.text_event("q", message_id="om_q", root_id="om_root", parent_id="om_root")
    plain = DRIVER.text_event("p", message_id="om_p")
    assert [thread_of(e) for e in (topic, quote, plain)] == ["omt_1", "om_root", ""]
    assert [split_reply_ref(must(e).reply_ref) for e in (topic, quote, plain)] == [
        ("om_t", True),
        ("om_q", False),
        ("om_p", False),
    ]
    assert thread_of({"event": "nope"}) == thread_of([]) == ""  # type: ignore[arg-type]


def _receive(**message: Any) -> dict[str, Any]:
    env = DRIVER.text_event("x", message_id="om_1")
    env["event"]["message"].update(message)
    return env


MALFORMED = {
    "not a mapping": ["x"],
    "no event_id": {"schema": "2.0", "header": {"event_type": "im.message.receive_v1"}, "event": {}},
    "no event": {**DRIVER.text_event("x"), "event": None},
    "no message": {**DRIVER.text_event("x"), "event": {"sender": {"sender_id": {"open_id": "ou_u"}}}},
    "message_id missing": _receive(message_id=None),
    "chat_id wrong type": _receive(chat_id=["oc"]),
    "mentions wrong type": _receive(mentions="@_user_1"),
    "content not JSON": _receive(content="{not json"),
    "content a list": _receive(content="[1]"),
    "text not a string": _receive(content=json.dumps({"text": 5})),
    "image without key": _receive(message_type="image", content="{}"),
    "no sender open_id": {**DRIVER.text_event("x"), "event": {**DRIVER.text_event("x")["event"], "sender": {}}},
}


@pytest.mark.parametrize("envelope", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_receive_events_are_400(envelope: Any) -> None:
    with pytest.raises(FeishuCallbackRejected) as info:
        to_inbound("fs1", envelope, bot_open_id=BOT, received_at=NOW)
    assert info.value.status == 400


def test_null_optional_fields_and_int_times_are_tolerated() -> None:
    env = _receive(root_id=None, thread_id=None, mentions=None, create_time=1700000000000, user_agent=None)
    env["event"]["sender"]["sender_id"]["user_id"] = None
    assert must(env).text == "x"
