"""Configuration of the WeCom adapter: self-built apps (自建应用) and AI bots (智能机器人)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from adapters.secrets import resolve_secret
from gateway.errors import ConfigError

KEY_PREFIX = "adapters.wecom"
DEFAULT_API_BASE = "https://qyapi.weixin.qq.com"
DEFAULT_WS_URL = "wss://openws.work.weixin.qq.com"

BotId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class WeComAppConfig(BaseModel):
    """A self-built app: callbacks at `/webhooks/wecom/<bot_id>`, replies by `message/send`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["app"] = "app"
    corp_id: str = Field(min_length=1)
    agent_id: int
    secret_env: str | None = None
    secret_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    encoding_aes_key_env: str | None = None
    encoding_aes_key_file: Path | None = None
    reply_format: Literal["text", "markdown"] = "text"
    # WeCom silently drops an identical message to the same member within this window (errcode 0):
    # long enough to absorb a resend after a crash or a lost 200, short enough that a genuinely
    # repeated answer ("好的" twice) a few minutes apart is still delivered. WeCom's default is 1800.
    duplicate_check_interval: int = Field(default=300, ge=1, le=14400)


class WeComAIBotConfig(BaseModel):
    """An AI bot in long-connection mode (WebSocket to `ws_url`), answers streamed as they are written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["aibot"]
    bot_id: str = Field(min_length=1)
    secret_env: str | None = None
    secret_file: Path | None = None
    welcome: str = ""


class WeComConfig(BaseModel):
    """The `adapters.wecom` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    api_base: str = DEFAULT_API_BASE
    ws_url: str = DEFAULT_WS_URL
    bots: dict[BotId, Annotated[WeComAppConfig | WeComAIBotConfig, Field(discriminator="kind")]] = Field(
        default_factory=dict
    )
    max_body_bytes: int = Field(default=64 * 1024, gt=0, le=1024 * 1024)
    timestamp_window: float = Field(default=3600, gt=0, le=86400)
    api_timeout: float = Field(default=10.0, gt=0, le=120)


@dataclass(frozen=True)
class WeComSecrets:
    """One bot's resolved secrets (token and AES key are empty for AI bots)."""

    secret: str
    token: str = ""
    encoding_aes_key: str = ""


def resolve_secrets(cfg: WeComConfig, env: Mapping[str, str]) -> dict[str, WeComSecrets]:
    """Every bot's secrets, or ConfigError naming the missing key."""
    out: dict[str, WeComSecrets] = {}
    for bot_id, bot in cfg.bots.items():
        key = f"{KEY_PREFIX}.bots.{bot_id}"
        secret = resolve_secret(f"{key}.secret", bot.secret_env, bot.secret_file, env)
        if isinstance(bot, WeComAIBotConfig):
            out[bot_id] = WeComSecrets(secret)
            continue
        aes = resolve_secret(f"{key}.encoding_aes_key", bot.encoding_aes_key_env, bot.encoding_aes_key_file, env)
        if len(aes) != 43:
            raise ConfigError(f"{key}.encoding_aes_key: must be the 43-character EncodingAESKey")
        out[bot_id] = WeComSecrets(secret, resolve_secret(f"{key}.token", bot.token_env, bot.token_file, env), aes)
    return out
