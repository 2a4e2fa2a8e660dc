"""Wire models of the webhook JSON, both directions.

Inbound bodies come from other systems and are validated strictly (no type coercion, no unknown
fields, bounded lengths) so that whatever reaches the journal is well-formed and bounded in size.
Ids must not contain control characters because they end up in logs and session keys.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

_NO_CONTROL = r"^[^\x00-\x1f\x7f]+$"


MessageId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_NO_CONTROL)]
ChatId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL)]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_NO_CONTROL)]

# Must stay equal to `gateway.messages.Attachment.kind` (a test checks it).
AttachmentKind = Literal["image", "file", "audio", "video", "link", "location", "other"]

MAX_TEXT_CHARS = 20000
MAX_ATTACHMENTS = 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class WireSender(_Strict):
    """Who sent the message; `name` is display text only and never trusted."""

    id: UserId
    name: str = Field(default="", max_length=256)


class WireAttachment(_Strict):
    """A reference to a file on the sending system; Switchboard never fetches it by itself."""

    kind: AttachmentKind
    ref: str = Field(min_length=1, max_length=2048)
    name: str = Field(default="", max_length=256)
    mime_type: str = Field(default="", max_length=128)
    size: int | None = Field(default=None, ge=0, le=2**63 - 1)


class WebhookInbound(_Strict):
    """The body of `POST /webhooks/webhook/{bot_id}`."""

    message_id: MessageId
    chat_id: ChatId
    chat_type: Literal["direct", "group"]
    sender: WireSender
    text: str = Field(default="", max_length=MAX_TEXT_CHARS)
    mentioned: bool = False
    attachments: list[WireAttachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        # An empty message would start an agent turn about nothing.
        if not self.text.strip() and not self.attachments:
            raise ValueError("message has neither text nor attachments")
        return self


class CallbackPart(BaseModel):
    """One reply part; `type` is "text", "markdown" or "progress"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["text", "markdown", "progress"]
    text: str


class WebhookCallback(BaseModel):
    """The body Switchboard POSTs to a bot's `callback_url` for every reply part.

    `text` is all parts joined, for receivers that only show plain text. Receivers should dedupe
    by `idempotency_key` (also sent as the `Idempotency-Key` header): a resend after a timeout or a
    crash carries the same key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    idempotency_key: str
    bot_id: str
    chat_id: str
    in_reply_to: str
    user_id: str
    parts: list[CallbackPart]
    text: str
