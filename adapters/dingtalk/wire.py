"""Pydantic model of a DingTalk robot message (Stream topic `/v1.0/im/bot/messages/get` and HTTP outgoing robot).

Both inbound modes deliver the same JSON object (protocols.md B2, `dingtalk_stream/chatbot.py` 0.24.3):
camelCase keys, `conversationType` "1" (1:1) / "2" (group), `msgtype` selecting `text.content` or the
`content` object (`downloadCode`, `fileName`, `recognition`, `richText[]`), a per-message `sessionWebhook`
that is valid until `sessionWebhookExpiredTime` (ms since the epoch).

The model is strict where we route on a value and lenient where the platform varies:

* ids we depend on (`msgId`, `conversationId`, `msgtype`) must be non-empty strings, the conversation type
  "1" or "2", and a sender must be identifiable (`senderStaffId` or `senderId`); otherwise ValidationError,
  which the HTTP handler answers with 400 instead of guessing;
* every string is length-bounded, so a hostile body cannot push megabytes into the journal per field;
* `null` optional strings become "" and numeric strings become ints (the SDK does `int(value)`);
* a `content` that is not an object (message types we do not model) is dropped, not rejected: Stream
  messages are fire-and-forget, so rejecting one loses it, while dropping its content still lets the
  converter answer "[unsupported: …]";
* unknown keys are ignored (the platform adds fields: `senderCorpId`, `isAdmin`, `senderPlatform`, …).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

MAX_ID = 256
MAX_URL = 2048
MAX_TEXT = 64 * 1024
MAX_ITEMS = 1000


def _none_to_empty(value: Any) -> Any:
    return "" if value is None else value


def _int_type(value: Any) -> Any:
    """Conversation types arrive as strings; tolerate the integer form other clients send."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _zero_if_none(value: Any) -> Any:
    return 0 if value is None else value


def _false_if_none(value: Any) -> Any:
    return False if value is None else value


def _object_or_none(value: Any) -> Any:
    return value if isinstance(value, dict) else None


def _none_to_empty_list(value: Any) -> Any:
    return () if value is None else value


Id = Annotated[str, BeforeValidator(_none_to_empty), Field(max_length=MAX_ID)]
RequiredId = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
Url = Annotated[str, BeforeValidator(_none_to_empty), Field(max_length=MAX_URL)]
Text = Annotated[str, BeforeValidator(_none_to_empty), Field(max_length=MAX_TEXT)]
Millis = Annotated[int, BeforeValidator(_zero_if_none), Field(ge=0, le=10**15)]
Flag = Annotated[bool, BeforeValidator(_false_if_none)]


class _Wire(BaseModel):
    """Fields are snake_case; the wire's camelCase names (`msgId`, `isInAtList`, …) are their aliases."""

    model_config = ConfigDict(extra="ignore", frozen=True, alias_generator=to_camel, populate_by_name=True)


class TextContent(_Wire):
    """`text` of msgtype "text"; the content keeps the space DingTalk leaves after a removed @-mention."""

    content: Text = ""


class AtUser(_Wire):
    """One @-mentioned user: `dingtalkId` always, `staffId` for members of the robot's organisation."""

    dingtalk_id: Id = ""
    staff_id: Id = ""


class RichTextItem(_Wire):
    """One node of `content.richText`: a text run, or a picture carrying a download code."""

    text: Text = ""
    type: Id = ""  # "picture" for images; absent for text runs
    download_code: Url = ""
    picture_download_code: Url = ""
    href: Url = ""  # link target, when a client sends one separately from the text
    url: Url = ""


class Content(_Wire):
    """`content` of picture / file / audio / video / richText messages."""

    download_code: Url = ""  # exchange via POST /v1.0/robot/messageFiles/download
    picture_download_code: Url = ""
    file_name: Id = ""
    recognition: Text = ""  # audio: DingTalk's speech-to-text
    rich_text: Annotated[
        tuple[RichTextItem, ...], BeforeValidator(_none_to_empty_list), Field(max_length=MAX_ITEMS)
    ] = ()


class BotMessage(_Wire):
    """One message a user sent to the robot (DM, or group message that @-mentions it / policy "all")."""

    msg_id: RequiredId  # dedup key
    msgtype: Annotated[str, Field(min_length=1, max_length=64)]
    conversation_type: Annotated[Literal["1", "2"], BeforeValidator(_int_type)]
    conversation_id: RequiredId
    conversation_title: Id = ""
    sender_id: Id = ""  # "$:LWCP_v1:$…", always sent
    sender_staff_id: Id = ""  # userId; only for members of the robot's organisation
    sender_nick: Id = ""  # user-controlled display name
    sender_corp_id: Id = ""
    chatbot_corp_id: Id = ""
    chatbot_user_id: Id = ""
    robot_code: Id = ""
    session_webhook: Url = ""
    session_webhook_expired_time: Millis = 0
    create_at: Millis = 0
    is_in_at_list: Flag = False
    is_admin: Flag = False
    at_users: Annotated[tuple[AtUser, ...], BeforeValidator(_none_to_empty_list), Field(max_length=MAX_ITEMS)] = ()
    text: TextContent | None = None
    content: Annotated[Content | None, BeforeValidator(_object_or_none)] = None

    @model_validator(mode="after")
    def _has_sender(self) -> BotMessage:
        if not self.sender_staff_id and not self.sender_id:
            raise ValueError("neither senderStaffId nor senderId is set")
        return self

    @property
    def is_group(self) -> bool:
        return self.conversation_type == "2"


def parse_bot_message(data: str | bytes) -> BotMessage:
    """The message in a JSON document; raises pydantic.ValidationError for anything else (bad JSON included)."""
    return BotMessage.model_validate_json(data)
