"""DingTalk robot messages → `InboundMessage`, and the reply bodies going back (pure functions).

Decisions:
* `platform_msg_id` is `msgId`, the dedup key (protocols.md B2); Stream bot messages are never
  redelivered, HTTP callbacks may be, and both carry the same `msgId`.
* `sender_id` is `senderStaffId` (the userId OpenAPI sends and cards address) when DingTalk gives one, else
  `senderId` (users outside the robot's organisation have no staffId). A user keeps the same choice across
  messages, so sessions stay stable.
* `reply_ref` is a compact JSON object holding everything a reply needs later - the sessionWebhook and its
  expiry, robotCode, conversation id and type, staffId - so an outbox resend after a restart needs no
  adapter state. `parse_reply_ref` reads it back. The webhook URL is a short-lived capability (anyone holding
  it can post into the chat until it expires); it stays inside the local journal.
* Text: `text.content` stripped (DingTalk leaves a space where it removed the @robot); richText runs are
  joined with their link targets kept; audio becomes DingTalk's own `recognition` text. Pictures, files,
  audio and video become attachments whose `ref` is the `downloadCode` (exchanged for a URL with
  `DingTalkApi.download_url`). Other message types become "[unsupported: <type>]": a DM still gets an
  answer ("I can't read that") and groups only answer it when it @-mentions the robot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from adapters.dingtalk.wire import BotMessage, Content, RichTextItem
from gateway.messages import Attachment, ChatKind, InboundMessage

PLATFORM = "dingtalk"
TITLE_CHARS = 20  # the notification / conversation-list preview shows about this much
DEFAULT_TITLE = "回复"
_TITLE_STRIP = "#>*-_`~ \t"
_MEDIA: dict[str, Literal["image", "file", "audio", "video"]] = {
    "picture": "image",
    "file": "file",
    "audio": "audio",
    "video": "video",
}
GroupPolicy = Literal["mention", "all"]


@dataclass(frozen=True)
class ReplyRef:
    """What answering one message needs; encoded into `InboundMessage.reply_ref` by `to_inbound`."""

    session_webhook: str
    webhook_expires_ms: int  # ms since the epoch; 0 = unknown
    robot_code: str
    conversation_id: str
    conversation_type: Literal["1", "2"]
    staff_id: str  # "" when the sender has no staffId (then only the sessionWebhook can reach them)

    @property
    def is_group(self) -> bool:
        return self.conversation_type == "2"

    def webhook_alive(self, now: float | None = None, *, margin: float = 60.0) -> bool:
        """True while the sessionWebhook is usable for at least `margin` more seconds (`now`: epoch seconds)."""
        if not self.session_webhook:
            return False
        now_ms = (time.time() if now is None else now) * 1000
        return self.webhook_expires_ms == 0 or now_ms + margin * 1000 < self.webhook_expires_ms

    def encode(self) -> str:
        data = {
            "w": self.session_webhook,
            "e": self.webhook_expires_ms,
            "r": self.robot_code,
            "c": self.conversation_id,
            "t": self.conversation_type,
            "s": self.staff_id,
        }
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def parse_reply_ref(reply_ref: str) -> ReplyRef | None:
    """The ReplyRef in a `reply_ref` made by `to_inbound`; None for "" or anything else (never raises)."""
    try:
        data = json.loads(reply_ref) if reply_ref else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    strings = [data.get(k) for k in ("w", "r", "c", "s")]
    expires, kind = data.get("e"), data.get("t")
    if not all(isinstance(v, str) for v in strings) or kind not in ("1", "2"):
        return None
    if not isinstance(expires, int) or isinstance(expires, bool) or expires < 0:
        return None
    webhook, robot, conversation, staff = (str(v) for v in strings)
    return ReplyRef(webhook, expires, robot, conversation, "2" if kind == "2" else "1", staff)


def to_inbound(bot_id: str, msg: BotMessage, received_at: datetime, *, robot_code: str) -> InboundMessage:
    """The normalized message; `robot_code` (config) is used when the message does not name its robot."""
    text, attachments = _content(msg)
    ref = ReplyRef(
        session_webhook=msg.session_webhook,
        webhook_expires_ms=msg.session_webhook_expired_time,
        robot_code=msg.robot_code or robot_code,
        conversation_id=msg.conversation_id,
        conversation_type=msg.conversation_type,
        staff_id=msg.sender_staff_id,
    )
    return InboundMessage(
        platform=PLATFORM,
        bot_id=bot_id,
        platform_msg_id=msg.msg_id,
        chat_id=msg.conversation_id,
        chat_kind=ChatKind.GROUP if msg.is_group else ChatKind.DIRECT,
        sender_id=msg.sender_staff_id or msg.sender_id,
        sender_name=msg.sender_nick,
        mentioned=msg.is_in_at_list,
        text=text,
        attachments=attachments,
        reply_ref=ref.encode(),
        received_at=received_at,
    )


def should_answer(msg: BotMessage, group_policy: GroupPolicy, group_policies: Mapping[str, GroupPolicy]) -> bool:
    """DMs always; groups only when the robot is @-mentioned, unless the conversation's policy is "all"."""
    if not msg.is_group:
        return True
    return group_policies.get(msg.conversation_id, group_policy) == "all" or msg.is_in_at_list


def title_of(text: str) -> str:
    """A markdown message's title (shown in notifications): the first line without markup, ≤ TITLE_CHARS."""
    for line in text.splitlines():
        line = line.strip(_TITLE_STRIP)
        if line:
            return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"
    return DEFAULT_TITLE


def markdown_message(text: str, title: str | None = None, at_staff_id: str | None = None) -> dict[str, Any]:
    """A sessionWebhook body: `{"msgtype":"markdown","markdown":{title,text},"at":{"atUserIds":[…]}}`.

    The @ notifies the user; DingTalk renders it only where the text itself contains "@<staffId>".
    """
    body: dict[str, Any] = {"msgtype": "markdown", "markdown": {"title": title or title_of(text), "text": text}}
    if at_staff_id:
        body["at"] = {"atUserIds": [at_staff_id]}
    return body


def sample_markdown(text: str, title: str | None = None) -> tuple[str, dict[str, str]]:
    """(msgKey, msgParam) of a markdown message for the robot OpenAPI sends (batchSend / groupMessages)."""
    return "sampleMarkdown", {"title": title or title_of(text), "text": text}


def _content(msg: BotMessage) -> tuple[str, tuple[Attachment, ...]]:
    content = msg.content or Content()
    kind = msg.msgtype
    if kind == "text":
        return (msg.text.content if msg.text else "").strip(), ()
    if kind == "richText":
        return _rich_text(content.rich_text)
    if kind in _MEDIA:
        code = content.download_code or content.picture_download_code
        text = content.recognition.strip() if kind == "audio" else ""
        if not code:
            return text or f"[{kind} without a download code]", ()
        return text, (Attachment(kind=_MEDIA[kind], ref=code, name=content.file_name),)
    return f"[unsupported: {kind[:40]}]", ()


def _rich_text(items: tuple[RichTextItem, ...]) -> tuple[str, tuple[Attachment, ...]]:
    """Text runs joined as sent (DingTalk puts line breaks inside them); pictures become attachments."""
    parts: list[str] = []
    attachments: list[Attachment] = []
    for item in items:
        code = item.download_code or item.picture_download_code
        if code:
            kind: Literal["image", "file"] = "image" if item.type in ("picture", "image", "") else "file"
            attachments.append(Attachment(kind=kind, ref=code))
        link = item.href or item.url
        if link and item.text and link not in item.text:
            parts.append(f"[{item.text}]({link})")
        elif item.text or link:
            parts.append(item.text or link)
    return "".join(parts).strip(), tuple(attachments)
