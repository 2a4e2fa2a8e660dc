"""Configuration of the Feishu / Lark adapter (one or more apps)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from adapters.secrets import resolve_secret

KEY_PREFIX = "adapters.feishu"
FEISHU_DOMAIN = "https://open.feishu.cn"  # Lark (international): https://open.larksuite.com

BotId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class FeishuBotConfig(BaseModel):
    """One self-built app; HTTP callbacks (if used) arrive at `/webhooks/feishu/<bot_id>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_id: str = Field(min_length=1)
    app_secret_env: str | None = None
    app_secret_file: Path | None = None
    # Long connection needs no public URL; "webhook" for apps configured with a request URL.
    inbound: Literal["long_connection", "webhook"] = "long_connection"
    verification_token_env: str | None = None
    verification_token_file: Path | None = None
    encrypt_key_env: str | None = None
    encrypt_key_file: Path | None = None
    # Groups: answer only when @-mentioned ("mention") or every message ("all"); per-chat overrides.
    group_policy: Literal["mention", "all"] = "mention"
    group_policies: dict[str, Literal["mention", "all"]] = Field(default_factory=dict)
    # Group answers go into the asking message's thread, so a busy group stays readable.
    reply_in_thread: bool = True
    # Answers still being written after this many seconds are shown in a streaming card.
    stream_after: float = Field(default=1.0, ge=0, le=60)
    streaming: Literal["cardkit", "off"] = "cardkit"


class FeishuConfig(BaseModel):
    """The `adapters.feishu` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    domain: str = FEISHU_DOMAIN
    # Where the long connection is bootstrapped, when not `domain` (a proxy, or a test's fake).
    long_connection_domain: str | None = None
    bots: dict[BotId, FeishuBotConfig] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=256 * 1024, gt=0, le=4 * 1024 * 1024)
    timestamp_window: float = Field(default=3600, gt=0, le=86400)
    api_timeout: float = Field(default=10.0, gt=0, le=120)
    # Images, files and audio users send are downloaded into the attachment store up to this size.
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)
    # Per chat and per user Feishu accepts 5 messages/s (shared by all bots); we stay under it.
    chat_messages_per_second: float = Field(default=4.0, gt=0, le=5)
    card_updates_per_second: float = Field(default=8.0, gt=0, le=10)

    @field_validator("domain", "long_connection_domain")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError("must be an origin like https://open.feishu.cn")
        return value.rstrip("/")


@dataclass(frozen=True)
class FeishuSecrets:
    """One app's resolved secrets (callback ones empty for long-connection apps)."""

    app_secret: str
    verification_token: str = ""
    encrypt_key: str = ""


def resolve_secrets(cfg: FeishuConfig, env: Mapping[str, str]) -> dict[str, FeishuSecrets]:
    """Every app's secrets, or ConfigError naming the missing key."""
    out: dict[str, FeishuSecrets] = {}
    for bot_id, bot in cfg.bots.items():
        key = f"{KEY_PREFIX}.bots.{bot_id}"
        secret = resolve_secret(f"{key}.app_secret", bot.app_secret_env, bot.app_secret_file, env)
        token = encrypt = ""
        if bot.inbound == "webhook":
            token = resolve_secret(
                f"{key}.verification_token", bot.verification_token_env, bot.verification_token_file, env
            )
            if bot.encrypt_key_env is not None or bot.encrypt_key_file is not None:
                encrypt = resolve_secret(f"{key}.encrypt_key", bot.encrypt_key_env, bot.encrypt_key_file, env)
        out[bot_id] = FeishuSecrets(secret, token, encrypt)
    return out
