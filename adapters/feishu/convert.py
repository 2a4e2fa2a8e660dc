"""Feishu events → `InboundMessage` (pure; works for HTTP callbacks and long-connection frames alike).

Content formats (the `message.content` JSON string of `im.message.receive_v1`), from the official
"接收消息内容结构" page (open.larkoffice.com/document/uAjLw4CM/ukTMukTMukTM/im-v1/message/events/message_content)
and Lark's own converters (github.com/larksuite/openclaw-lark `src/messaging/converters/*.ts`):

* text    `{"text": "@_user_1 hi"}` - each @ is a `@_user_N` placeholder resolved through `message.mentions`.
* post    `{"title": t, "content": [[element, ...], ...]}` (received posts are flat; the send format and some
          clients wrap it per locale: `{"zh_cn": {...}, "en_us": {...}}`, so both are read). Elements: `text`,
          `a` (text, href), `at` (user_id = placeholder key or open_id, user_name), `img` (image_key),
          `media` (file_key, image_key), `emotion` (emoji_type), `code_block` (language, text), `hr`, `md`.
* image   `{"image_key"}`; file `{"file_key", "file_name"}`; audio `{"file_key", "duration"}` (ms);
          media (video) `{"file_key", "image_key", "file_name", "duration"}`; sticker `{"file_key"}`.

Attachment refs are `"{message_id}:{key}"`: user-sent resources are only downloadable through
`GET /open-apis/im/v1/messages/:message_id/resources/:file_key?type=image|file` (lark-oapi
`GetMessageResourceRequest`), which needs both halves.

Decisions:
* `platform_msg_id` is `message.message_id`, not `header.event_id`: Feishu redelivers an unacknowledged
  event (no 200 within 3 s; again at 15 s, 5 min, 1 h, 6 h - protocols.md G), and the receive event's own
  page warns that "in special cases" the same message is pushed again as a new event, so idempotency must
  use message_id and not rely on event_id (open.feishu.cn .../im-v1/message/events/receive). Keyed by
  event_id, such a push was a new journal row, a second turn and a second reply.
* `chat_type` "p2p" is a DM; anything else ("group", or a kind added later) is treated as a group, so an
  unknown kind needs an @-mention rather than being answered like a DM.
* `reply_ref` is the message_id, suffixed with `THREAD_SUFFIX` when the message sits in a topic thread
  (`thread_id` set): the adapter then replies with `reply_in_thread=true` so the answer stays in the
  thread. `split_reply_ref` undoes it. A bare `root_id` (a quote reply) does not make a thread. The ref is
  self-contained so an outbox resend after a restart needs no adapter state.
* Stickers, cards, shared chats/users, locations, … become text `"[unsupported: <type>]"` with no
  attachment: a DM then still gets an answer ("I can't read that") instead of silence, while in groups
  `should_answer` drops them (they cannot carry an @-mention).
* Messages sent by apps (`sender_type == "app"`, ourselves or another bot) → None: no bot-to-bot loops.
* Other event types (recall, read receipts, reactions, `im.chat.*`, v1 events) → None, acked and ignored.
  There is no message-edit event in lark-oapi 1.7.5's dispatcher (`register_p2_im_message_*`: receive,
  recalled, message_read, reaction created/deleted), so edits are not handled.
* A malformed envelope or receive event (missing ids, wrong types, content that is not the JSON its
  type promises) → FeishuCallbackRejected(400). Nothing else is raised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from adapters.feishu.callback import FeishuCallbackRejected
from adapters.feishu.wire import Mention, ReceiveEvent
from gateway.messages import Attachment, ChatKind, InboundMessage

PLATFORM = "feishu"
RECEIVE_EVENT = "im.message.receive_v1"
THREAD_SUFFIX = "#thread"
_PLACEHOLDER_RE = re.compile(r"(@_user_\d+|@_all\b)(\s*)")
_LOCALES = ("zh_cn", "en_us", "ja_jp")
_MEDIA: dict[str, tuple[Literal["image", "file", "audio", "video"], str]] = {
    "image": ("image", "image_key"),
    "file": ("file", "file_key"),
    "audio": ("audio", "file_key"),
    "media": ("video", "file_key"),
}


def to_inbound(
    bot_id: str, envelope: Mapping[str, Any], *, bot_open_id: str, received_at: datetime
) -> InboundMessage | None:
    """The user message in a schema-2.0 `im.message.receive_v1` envelope, or None for anything we ignore."""
    if not isinstance(envelope, Mapping):
        raise FeishuCallbackRejected(400, "envelope is not a JSON object")
    header = envelope.get("header")
    if not isinstance(header, Mapping):
        return None  # v1 events (uuid, no header) carry no message we handle
    if header.get("event_type") != RECEIVE_EVENT:
        return None
    event_id = header.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        raise FeishuCallbackRejected(400, "header.event_id missing")
    try:
        event = ReceiveEvent.model_validate(envelope.get("event"))
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in err["loc"]) or "event" for err in exc.errors()})
        raise FeishuCallbackRejected(400, f"malformed {RECEIVE_EVENT}: {', '.join(fields[:5])}") from None
    if event.sender.sender_type == "app":
        return None
    sender = event.sender.sender_id.open_id
    if not sender:
        raise FeishuCallbackRejected(400, f"malformed {RECEIVE_EVENT}: sender.sender_id.open_id")
    message = event.message
    if not message.message_id:
        raise FeishuCallbackRejected(400, f"malformed {RECEIVE_EVENT}: message.message_id")
    mentions = message.mentions
    text, attachments = _content(message.message_type, message.content, message.message_id, mentions, bot_open_id)
    return InboundMessage(
        platform=PLATFORM,
        bot_id=bot_id,
        platform_msg_id=message.message_id,
        chat_id=message.chat_id,
        chat_kind=ChatKind.DIRECT if message.chat_type == "p2p" else ChatKind.GROUP,
        sender_id=sender,
        sender_name=next((m.name for m in mentions if m.id.open_id == sender), ""),
        mentioned=bool(bot_open_id) and any(m.id.open_id == bot_open_id for m in mentions),
        text=text,
        attachments=attachments,
        reply_ref=message.message_id + (THREAD_SUFFIX if message.thread_id else ""),
        received_at=received_at,
    )


def split_reply_ref(reply_ref: str) -> tuple[str, bool]:
    """(message_id, reply_in_thread) from a `reply_ref` made by `to_inbound`."""
    if reply_ref.endswith(THREAD_SUFFIX):
        return reply_ref[: -len(THREAD_SUFFIX)], True
    return reply_ref, False


def thread_of(envelope: Mapping[str, Any]) -> str:
    """The conversation thread a message belongs to: its topic `thread_id`, else the reply chain's
    `root_id`, else "" (also for anything that is not a well-formed message event). Never raises."""
    event = envelope.get("event") if isinstance(envelope, Mapping) else None
    message = event.get("message") if isinstance(event, Mapping) else None
    if not isinstance(message, Mapping):
        return ""
    for key in ("thread_id", "root_id"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def should_answer(msg: InboundMessage, *, group_policy: Literal["mention", "all"]) -> bool:
    """DMs always; group messages only when the bot was @-mentioned, unless the policy is "all"."""
    return msg.chat_kind is ChatKind.DIRECT or msg.mentioned or group_policy == "all"


def _content(
    message_type: str, raw: str, message_id: str, mentions: tuple[Mention, ...], bot_open_id: str
) -> tuple[str, tuple[Attachment, ...]]:
    if message_type not in ("text", "post", *_MEDIA):
        return f"[unsupported: {message_type[:40]}]", ()
    try:
        content = json.loads(raw)
    except (ValueError, RecursionError):
        raise FeishuCallbackRejected(400, f"{message_type} content is not valid JSON") from None
    if not isinstance(content, dict):
        raise FeishuCallbackRejected(400, f"{message_type} content is not a JSON object")
    if message_type == "text":
        text = content.get("text")
        if not isinstance(text, str):
            raise FeishuCallbackRejected(400, "text content without a text string")
        return _resolve_mentions(text, mentions, bot_open_id), ()
    if message_type == "post":
        return _post(content, message_id, mentions, bot_open_id)
    kind, key_field = _MEDIA[message_type]
    key = content.get(key_field)
    if not isinstance(key, str) or not key:
        raise FeishuCallbackRejected(400, f"{message_type} content without {key_field}")
    name = content.get("file_name")
    return "", (Attachment(kind=kind, ref=f"{message_id}:{key}", name=name if isinstance(name, str) else ""),)


def _resolve_mentions(text: str, mentions: tuple[Mention, ...], bot_open_id: str) -> str:
    """`@_user_N` → `@name`; the bot's own mention is removed with the whitespace after it."""
    by_key = {m.key: m for m in mentions if m.key}

    def replace(match: re.Match[str]) -> str:
        placeholder, space = match.group(1), match.group(2)
        mention = by_key.get(placeholder)
        if mention is None:
            return ("@all" if placeholder == "@_all" else placeholder) + space
        if bot_open_id and mention.id.open_id == bot_open_id:
            return ""
        return f"@{mention.name or mention.id.open_id}{space}"

    return _PLACEHOLDER_RE.sub(replace, text).strip()


def _post_body(content: dict[str, Any]) -> Mapping[str, Any]:
    """The {title, content} object of a flat, locale-wrapped or `{"post": ...}`-wrapped post."""
    if isinstance(content.get("post"), dict):
        content = content["post"]
    if "content" in content or "title" in content:
        return content
    for locale in (*_LOCALES, *content):
        body = content.get(locale)
        if isinstance(body, dict):
            return body
    return {}


def _post(
    content: dict[str, Any], message_id: str, mentions: tuple[Mention, ...], bot_open_id: str
) -> tuple[str, tuple[Attachment, ...]]:
    """Readable text of a rich-text post; its images and videos also become attachments."""
    body = _post_body(content)
    lines: list[str] = []
    title = body.get("title")
    if isinstance(title, str) and title.strip():
        lines.append(title.strip())
    attachments: list[Attachment] = []
    paragraphs = body.get("content")
    for paragraph in paragraphs if isinstance(paragraphs, list) else ():
        if not isinstance(paragraph, list):
            continue
        inline = ""
        for el in paragraph:
            block = _block(el)
            if block is None:
                inline += _inline(el, message_id, mentions, bot_open_id, attachments)
                continue
            if inline.strip():
                lines.append(inline.strip())
            lines.append(block)
            inline = ""
        if inline.strip() or not paragraph:
            lines.append(inline.strip())
    text = "\n".join(lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip(), tuple(attachments)


def _block(el: Any) -> str | None:
    """Code blocks and rules stand on their own lines; None for inline elements."""
    tag = el.get("tag") if isinstance(el, dict) else None
    if tag == "code_block":
        return f"```{_s(el.get('language')).lower()}\n{_s(el.get('text')).rstrip()}\n```"
    if tag == "hr":
        return "---"
    return None


def _inline(
    el: Any, message_id: str, mentions: tuple[Mention, ...], bot_open_id: str, attachments: list[Attachment]
) -> str:
    if not isinstance(el, dict):
        return ""
    tag, text = el.get("tag"), _s(el.get("text"))
    if tag == "a":
        href = _s(el.get("href"))
        return f"{text} ({href})" if href and text and text != href else href or text
    if tag == "at":
        return _post_mention(el, mentions, bot_open_id)
    if tag in ("img", "media"):
        key = _s(el.get("image_key" if tag == "img" else "file_key"))
        if key:
            kind: Literal["image", "video"] = "image" if tag == "img" else "video"
            attachments.append(Attachment(kind=kind, ref=f"{message_id}:{key}"))
        return "[image]" if tag == "img" else "[video]"
    if tag == "emotion":
        return f":{_s(el.get('emoji_type'))}:"
    return text  # "text", "md" and tags added later: their text, if any


def _post_mention(el: Mapping[str, Any], mentions: tuple[Mention, ...], bot_open_id: str) -> str:
    """Post `at` elements name a mention by placeholder key (events) or open_id (API reads)."""
    user_id, name = _s(el.get("user_id")), _s(el.get("user_name"))
    if user_id in ("all", "@_all"):
        return "@all"
    mention = next((m for m in mentions if user_id and user_id in (m.key, m.id.open_id)), None)
    open_id = mention.id.open_id if mention else user_id
    if bot_open_id and open_id == bot_open_id:
        return ""
    return f"@{(mention.name if mention else '') or name or open_id}"


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""
