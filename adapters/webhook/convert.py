"""Pure conversions between the webhook wire models and the normalized message types."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.webhook.wire import CallbackPart, WebhookCallback, WebhookInbound
from gateway.messages import Attachment, ChatKind, InboundMessage, OutboundMessage

PLATFORM = "webhook"


def to_inbound(bot_id: str, body: WebhookInbound, received_at: datetime) -> InboundMessage:
    """The normalized message for a validated inbound body.

    `reply_ref` stays empty: replies are addressed by chat id and go to the bot's callback URL,
    so there is nothing platform-specific to remember.

    Built with `model_construct`: every field comes from the strictly validated wire model (exact
    types, bounded lengths, no coercion), so validating again only cost the ingest path its single
    largest CPU item. tests/test_webhook_adapter.py checks the result equals a validated one.
    """
    return InboundMessage.model_construct(
        platform=PLATFORM,
        bot_id=bot_id,
        platform_msg_id=body.message_id,
        chat_id=body.chat_id,
        chat_kind=ChatKind(body.chat_type),
        sender_id=body.sender.id,
        sender_name=body.sender.name,
        mentioned=body.mentioned,
        text=body.text,
        attachments=tuple(
            Attachment.model_construct(kind=a.kind, ref=a.ref, name=a.name, mime_type=a.mime_type, size=a.size)
            for a in body.attachments
        ),
        reply_ref="",
        received_at=received_at,
    )


def to_callback(msg: OutboundMessage) -> dict[str, Any]:
    """The JSON-ready callback body for one outbound message."""
    target = msg.target
    return WebhookCallback(
        idempotency_key=msg.idempotency_key,
        bot_id=target.bot_id,
        chat_id=target.chat_id,
        in_reply_to=target.in_reply_to,
        user_id=target.user_id,
        parts=[CallbackPart(type=p.type, text=p.text) for p in msg.parts],
        text=msg.text,
    ).model_dump(mode="json")
