"""Builders for realistic Feishu `im.message.receive_v1` schema-2.0 event envelopes.

The envelope is what arrives over the WebSocket long connection (payload) and, encrypted or not, over
HTTP callbacks: {"schema":"2.0","header":{event_id, token, create_time (ms string), event_type, tenant_key,
app_id},"event":{"sender":{...},"message":{...}}} (shape: protocols.md A2, lark-oapi's P2ImMessageReceiveV1).
Message `content` is a JSON *string*; receive-side post content has no locale level:
{"title": ..., "content": [[{"tag": "text", ...}, {"tag": "a", "href": ...}]]}.

    ev = text_event("hello")                                   # p2p text
    ev = group_mention_event("summarise", bot_open_id=api.bot_open_id())  # "@_user_1 summarise" in a group
    api.add_event(ev)                                          # FakeFeishuAPI: make it repliable
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tests.fakes.feishu_api import APP_ID

__all__ = [
    "BOT",
    "USER",
    "Person",
    "at",
    "audio_event",
    "file_event",
    "group_mention_event",
    "image_event",
    "link",
    "mention",
    "message_event",
    "post_event",
    "text",
    "text_event",
]

Json = dict[str, Any]
TENANT_KEY = "fake_tenant_key"
VERIFICATION_TOKEN = "fake-verification-token"


@dataclass(frozen=True)
class Person:
    open_id: str
    user_id: str = ""
    union_id: str = ""
    name: str = ""

    def ids(self) -> Json:
        return {"union_id": self.union_id, "user_id": self.user_id, "open_id": self.open_id}


USER = Person("ou_fake_user_0001", "u_fake_0001", "on_fake_user_0001", "Alice")
BOT = Person("ou_fake_bot_0001", "", "on_fake_bot_0001", "Switchboard")


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


def mention(key: str, person: Person, *, tenant_key: str = TENANT_KEY) -> Json:
    """One entry of message.mentions; `key` ("@_user_1") is what appears in the text."""
    return {"key": key, "id": person.ids(), "name": person.name, "tenant_key": tenant_key}


def message_event(
    message_type: str,
    content: Json | str,
    *,
    sender: Person = USER,
    chat_id: str = "oc_fake_p2p_chat_0001",
    chat_type: Literal["p2p", "group"] = "p2p",
    message_id: str | None = None,
    root_id: str = "",
    parent_id: str = "",
    thread_id: str = "",
    mentions: Sequence[Json] = (),
    event_id: str | None = None,
    create_time_ms: int | None = None,
    app_id: str = APP_ID,
    tenant_key: str = TENANT_KEY,
    token: str = VERIFICATION_TOKEN,
) -> Json:
    """A full schema-2.0 im.message.receive_v1 envelope (every other builder ends here)."""
    ms = str(create_time_ms if create_time_ms is not None else int(time.time() * 1000))
    message: Json = {
        "message_id": message_id or _id("om_"),
        "root_id": root_id,
        "parent_id": parent_id,
        "create_time": ms,
        "update_time": ms,
        "chat_id": chat_id,
        "thread_id": thread_id,
        "chat_type": chat_type,
        "message_type": message_type,
        "content": content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
        "mentions": list(mentions),
        "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Lark/7.30.0",
    }
    header = {
        "event_id": event_id or uuid.uuid4().hex,
        "token": token,
        "create_time": ms,
        "event_type": "im.message.receive_v1",
        "tenant_key": tenant_key,
        "app_id": app_id,
    }
    sender_block = {"sender_id": sender.ids(), "sender_type": "user", "tenant_key": tenant_key}
    return {"schema": "2.0", "header": header, "event": {"sender": sender_block, "message": message}}


def text_event(body: str, **kw: Any) -> Json:
    return message_event("text", {"text": body}, **kw)


def text(value: str) -> Json:
    """A post text element."""
    return {"tag": "text", "text": value}


def link(label: str, href: str) -> Json:
    """A post hyperlink element."""
    return {"tag": "a", "text": label, "href": href}


def at(person: Person) -> Json:
    """A post @-mention element (receive side)."""
    return {"tag": "at", "user_id": person.open_id, "user_name": person.name}


def post_event(title: str, paragraphs: Sequence[Sequence[Json]], **kw: Any) -> Json:
    """A rich-text message; e.g. post_event("Links", [[text("see "), link("docs", "https://x.test")]])."""
    return message_event("post", {"title": title, "content": [list(p) for p in paragraphs]}, **kw)


def image_event(image_key: str = "img_v3_fake_0001", **kw: Any) -> Json:
    return message_event("image", {"image_key": image_key}, **kw)


def file_event(file_key: str = "file_v3_fake_0001", file_name: str = "report.pdf", **kw: Any) -> Json:
    return message_event("file", {"file_key": file_key, "file_name": file_name}, **kw)


def audio_event(file_key: str = "file_v3_fake_audio_0001", duration_ms: int = 3000, **kw: Any) -> Json:
    return message_event("audio", {"file_key": file_key, "duration": duration_ms}, **kw)


def group_mention_event(
    body: str,
    *,
    bot_open_id: str = BOT.open_id,
    bot_name: str = BOT.name,
    also_mention: Sequence[Person] = (),
    chat_id: str = "oc_fake_group_chat_0001",
    **kw: Any,
) -> Json:
    """A group text message that @-mentions the bot first ("@_user_1 <body>"), then `also_mention` people."""
    bot = Person(bot_open_id, "", "", bot_name)
    people = [bot, *also_mention]
    mentions = [mention(f"@_user_{i}", p) for i, p in enumerate(people, start=1)]
    extra = "".join(f" @_user_{i}" for i in range(2, len(people) + 1))
    return message_event(
        "text", {"text": f"@_user_1 {body}{extra}"}, chat_id=chat_id, chat_type="group", mentions=mentions, **kw
    )
