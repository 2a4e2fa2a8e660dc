"""What the model sees of a wechatpy message (WeCom's message classes extend the OA ones)."""

from __future__ import annotations

from typing import Any

from gateway.messages import Attachment


def dedup_id(message: Any) -> str:
    """The journal key of a message or event, stable across the platform's retries of it.

    Messages dedupe by MsgId; events (which have none) by FromUserName + CreateTime, as WeChat advises,
    plus the event and its key: two different menu items clicked within one second are two messages.
    Raises ValueError for a message without a MsgId: wechatpy reads a missing one as 0, which would make
    every such message a duplicate of the first.
    """
    if message.type == "event":
        event, key = getattr(message, "event", ""), getattr(message, "key", "") or ""
        return f"event:{message.source}:{int(message.create_time.timestamp())}:{event}:{key}"
    if not message.id:
        raise ValueError("message without MsgId")
    return str(message.id)


def content_of(m: Any) -> tuple[str, tuple[Attachment, ...]]:
    """Text plus attachments; voice uses the platform's speech recognition when present."""
    if m.type == "text":
        return str(m.content or ""), ()
    if m.type == "image":
        return "", (Attachment(kind="image", ref=str(m.media_id or ""), name=str(m.image or "")),)
    if m.type == "voice":
        if m.recognition:  # the platform's speech recognition (when enabled) is what the user said
            return str(m.recognition), ()
        return "", (Attachment(kind="audio", ref=str(m.media_id or ""), mime_type=f"audio/{m.format or 'amr'}"),)
    if m.type in ("video", "shortvideo"):
        return "", (Attachment(kind="video", ref=str(m.media_id or "")),)
    if m.type == "link":
        text = "\n".join(p for p in (str(m.title or ""), str(m.description or ""), str(m.url or "")) if p)
        return text, (Attachment(kind="link", ref=str(m.url or ""), name=str(m.title or "")),)
    if m.type == "location":
        where = f"{m.label or ''} ({m.location_x}, {m.location_y})".strip()
        return f"[位置] {where}", (Attachment(kind="location", ref=f"{m.location_x},{m.location_y}", name=where),)
    if m.type == "event":  # a menu click: the key is what the user chose
        return f"[菜单] {getattr(m, 'key', '') or ''}", ()
    return "", ()
