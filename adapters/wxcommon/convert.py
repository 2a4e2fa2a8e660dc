"""What the model sees of a wechatpy message (WeCom's message classes extend the OA ones)."""

from __future__ import annotations

from typing import Any

from gateway.messages import Attachment


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
