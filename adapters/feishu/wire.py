"""Pydantic models of the `im.message.receive_v1` event body (the `event` object of a schema-2.0 envelope).

Field names and types follow lark-oapi 1.7.5 (`lark_oapi/api/im/v1/model/p2_im_message_receive_v1.py`,
`event_message.py`, `event_sender.py`, `mention_event.py`, `user_id.py`) and protocols.md section A2.
The models are deliberately lenient where the platform is known to vary and strict where we depend on a
value: missing or `null` optional strings become "", integers where a string is expected become strings
(the SDK types `create_time` as int, the wire sends a millisecond string), unknown keys are ignored (the
platform adds fields over time, e.g. `user_agent`, `lark_agent_context`). The ids we route on
(`message_id`, `chat_id`, `chat_type`, `message_type`, the sender's `open_id`) must be non-empty strings, so
a body missing them fails validation and the caller answers 400 instead of guessing.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field


def _lenient_str(value: Any) -> Any:
    """None → "", int → str; everything else is left for pydantic to accept or reject."""
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _lenient_list(value: Any) -> Any:
    return () if value is None else value


Str = Annotated[str, BeforeValidator(_lenient_str)]
Required = Annotated[str, BeforeValidator(_lenient_str), Field(min_length=1)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=False)


class UserId(_Wire):
    """The three ids Feishu gives a user; `open_id` (ou_…) is per app and always present."""

    open_id: Str = ""
    union_id: Str = ""
    user_id: Str = ""  # only with the contact permission


class Sender(_Wire):
    sender_id: UserId = Field(default_factory=UserId)
    sender_type: Str = ""  # "user"; "app" for messages sent by a bot
    tenant_key: Str = ""


class Mention(_Wire):
    """One @-mention; `key` is the `@_user_N` placeholder used in the content JSON."""

    key: Str = ""
    id: UserId = Field(default_factory=UserId)
    name: Str = ""
    tenant_key: Str = ""
    mentioned_type: Str = ""


class Message(_Wire):
    message_id: Required
    root_id: Str = ""  # first message of the reply chain (quote replies and threads)
    parent_id: Str = ""  # the message this one directly replies to
    create_time: Str = ""  # milliseconds since the epoch, as a string
    update_time: Str = ""
    chat_id: Required
    thread_id: Str = ""  # set only for messages inside a topic thread (话题)
    chat_type: Required  # "p2p" | "group"
    message_type: Required  # "text" | "post" | "image" | "file" | "audio" | "media" | "sticker" | ...
    content: Str = ""  # a JSON *string*; its shape depends on message_type
    mentions: Annotated[tuple[Mention, ...], BeforeValidator(_lenient_list)] = ()


class ReceiveEvent(_Wire):
    """The `event` object of `im.message.receive_v1`."""

    sender: Sender  # its open_id is checked by the converter (must be non-empty)
    message: Message
