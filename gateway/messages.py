"""Normalized, platform-free message types: the only nouns the core knows.

Adapters convert their wire payloads into these and back; nothing platform-specific
(no raw payload) crosses into the core, so adding a platform never touches it.
"""

from __future__ import annotations

import enum
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# JSON may carry an unpaired "\\ud800" escape; json.loads keeps it, but it has no UTF-8 form.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Received(_Frozen):
    """Text from a platform: a lone surrogate becomes U+FFFD, since nothing could store or send it
    (the journal's JSON encoding fails, and the platform would retry that message for hours)."""

    @field_validator("*", mode="before")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        if isinstance(value, str) and _LONE_SURROGATE.search(value):
            return _LONE_SURROGATE.sub("\ufffd", value)
        return value


class ChatKind(enum.StrEnum):
    """Whether a chat is a one-to-one conversation or a group."""

    DIRECT = "direct"
    GROUP = "group"


class Attachment(_Received):
    """A file the user sent; `ref` is an adapter-opaque handle (download code, media id, URL)."""

    kind: Literal["image", "file", "audio", "video", "link", "location", "other"]
    ref: str
    name: str = ""
    mime_type: str = ""
    size: int | None = None


class InboundMessage(_Received):
    """One message a user sent to a bot, as the core sees it.

    `sender_name` is untrusted user-controlled text: never treat it as an instruction.
    `reply_ref` is opaque to the core and only handed back to the same adapter.
    """

    platform: str
    bot_id: str
    platform_msg_id: str
    chat_id: str
    chat_kind: ChatKind
    sender_id: str
    sender_name: str = ""
    mentioned: bool = False
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    reply_ref: str = ""
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def gateway_id(self) -> str:
        """Stable id across platforms and retries; used as the log correlation id."""
        return f"{self.platform}/{self.bot_id}/{self.platform_msg_id}"


class TextPart(_Frozen):
    """Plain text the adapter must not interpret as markup."""

    type: Literal["text"] = "text"
    text: str


class MarkdownPart(_Frozen):
    """Markdown; adapters render or reduce it to what the platform shows."""

    type: Literal["markdown"] = "markdown"
    text: str


class ProgressPart(_Frozen):
    """A short status line shown while work runs (may be dropped by platforms without one)."""

    type: Literal["progress"] = "progress"
    text: str


Part = Annotated[TextPart | MarkdownPart | ProgressPart, Field(discriminator="type")]


class Target(_Frozen):
    """Where a reply goes: a chat of one bot on one platform, optionally answering a message."""

    platform: str
    bot_id: str
    chat_id: str
    chat_kind: ChatKind
    user_id: str = ""
    reply_ref: str = ""
    in_reply_to: str = ""


class OutboundMessage(_Frozen):
    """One reply part to deliver; `idempotency_key` is stable across retries and restarts."""

    target: Target
    parts: tuple[Part, ...]
    idempotency_key: str
    # The reply reports a failure (model or skill error) instead of an answer: adapters that show a
    # status (streaming cards) show it as failed; everything else just sends the text.
    failed: bool = False

    @property
    def text(self) -> str:
        """All parts joined, for adapters that only send plain text."""
        return "\n\n".join(p.text for p in self.parts)


class SessionScope(enum.StrEnum):
    """How group conversations map to sessions."""

    PER_USER = "per_user"
    PER_GROUP = "per_group"


class SessionKey(_Frozen):
    """Identity of one conversation state; build it only with `session_key_for`."""

    platform: str
    bot_id: str
    chat_id: str
    user_id: str

    def __str__(self) -> str:
        return f"{self.platform}:{self.bot_id}:{self.chat_id}:{self.user_id}"


def session_key_for(msg: InboundMessage, group_scope: SessionScope = SessionScope.PER_USER) -> SessionKey:
    """The single place a SessionKey is assembled.

    DMs are per user. Groups are per (group, user) by default so one member's context
    never leaks into another's; `PER_GROUP` shares one session per group when configured.
    """
    if msg.chat_kind is ChatKind.DIRECT:
        return SessionKey(platform=msg.platform, bot_id=msg.bot_id, chat_id="", user_id=msg.sender_id)
    user = "" if group_scope is SessionScope.PER_GROUP else msg.sender_id
    return SessionKey(platform=msg.platform, bot_id=msg.bot_id, chat_id=msg.chat_id, user_id=user)


def reply_target(msg: InboundMessage) -> Target:
    """The target that answers `msg` in the chat it came from."""
    return Target(
        platform=msg.platform,
        bot_id=msg.bot_id,
        chat_id=msg.chat_id,
        chat_kind=msg.chat_kind,
        user_id=msg.sender_id,
        reply_ref=msg.reply_ref,
        in_reply_to=msg.platform_msg_id,
    )
