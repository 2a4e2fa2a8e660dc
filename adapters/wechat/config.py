"""Configuration of the WeChat Official Account adapter (one or more accounts)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from adapters.secrets import resolve_secret
from gateway.errors import ConfigError

KEY_PREFIX = "adapters.wechat"
DEFAULT_API_BASE = "https://api.weixin.qq.com"

BotId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class CallbackMode(enum.StrEnum):
    """Message encryption chosen in the OA console (明文 / 兼容 / 安全模式)."""

    PLAIN = "plain"
    COMPAT = "compat"
    SAFE = "safe"


class WeChatBotConfig(BaseModel):
    """One Official Account: its callback is `/webhooks/wechat/<bot_id>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_id: str = Field(min_length=1)
    app_secret_env: str | None = None
    app_secret_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    encoding_aes_key_env: str | None = None
    encoding_aes_key_file: Path | None = None
    mode: CallbackMode = CallbackMode.SAFE
    # Verified service accounts may push replies (客服消息); others can only answer inside a request.
    customer_service: bool = True
    passive_budget: float = Field(default=4.5, gt=0, le=4.9)
    welcome: str = "你好！直接发消息给我就可以开始对话。"

    @model_validator(mode="after")
    def _aes_key_for_encrypted_modes(self) -> WeChatBotConfig:
        has_key = self.encoding_aes_key_env is not None or self.encoding_aes_key_file is not None
        if self.mode is not CallbackMode.PLAIN and not has_key:
            raise ValueError(f"mode '{self.mode}' needs encoding_aes_key_env or encoding_aes_key_file")
        return self


class WeChatConfig(BaseModel):
    """The `adapters.wechat` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    api_base: str = DEFAULT_API_BASE
    bots: dict[BotId, WeChatBotConfig] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=64 * 1024, gt=0, le=1024 * 1024)
    # WeChat's own signature covers only timestamp + nonce: refusing old timestamps limits replays.
    timestamp_window: float = Field(default=300, gt=0, le=86400)
    # A delivery is retried 3 times (4 attempts); the last one is answered "success" so that the
    # user never sees "该公众号暂时无法提供服务".
    platform_attempts: int = Field(default=4, ge=1, le=10)
    platform_timeout: float = Field(default=5.0, gt=0, le=30)
    api_timeout: float = Field(default=10.0, gt=0, le=120)


@dataclass(frozen=True)
class WeChatSecrets:
    """One account's resolved secrets."""

    app_secret: str
    token: str
    encoding_aes_key: str


def resolve_secrets(cfg: WeChatConfig, env: Mapping[str, str]) -> dict[str, WeChatSecrets]:
    """Every account's secrets, or ConfigError naming the missing key."""
    out: dict[str, WeChatSecrets] = {}
    for bot_id, bot in cfg.bots.items():
        key = f"{KEY_PREFIX}.bots.{bot_id}"
        aes = ""
        if bot.mode is not CallbackMode.PLAIN:
            aes = resolve_secret(f"{key}.encoding_aes_key", bot.encoding_aes_key_env, bot.encoding_aes_key_file, env)
            if len(aes) != 43:
                raise ConfigError(f"{key}.encoding_aes_key: must be the 43-character EncodingAESKey")
        out[bot_id] = WeChatSecrets(
            app_secret=resolve_secret(f"{key}.app_secret", bot.app_secret_env, bot.app_secret_file, env),
            token=resolve_secret(f"{key}.token", bot.token_env, bot.token_file, env),
            encoding_aes_key=aes,
        )
    return out
