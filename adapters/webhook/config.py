"""Configuration of the signed-JSON webhook adapter.

The HMAC secrets are never written inline in the config file: each bot names an environment
variable or a file holding its secret, and `resolve_secrets` reads them once at startup so a
missing secret fails the boot with the exact config key path instead of failing on the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from gateway.errors import ConfigError

KEY_PREFIX = "adapters.webhook"

# Bot ids appear in the route path and in logs: keep them to a safe, URL-clean alphabet.
BotId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class WebhookBotConfig(BaseModel):
    """One bot reachable at `POST /webhooks/webhook/{bot_id}`; replies go to `callback_url`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    secret_env: str | None = Field(default=None, min_length=1)
    secret_file: Path | None = None
    callback_url: str
    timeout: float = Field(default=10, gt=0, le=300)

    @field_validator("callback_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> Self:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("exactly one of secret_env or secret_file is required")
        return self


class WebhookConfig(BaseModel):
    """The `adapters.webhook` section of the gateway config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    bots: dict[BotId, WebhookBotConfig] = Field(default_factory=dict)
    # At most an hour: a replay must never outlive the journal's dedup memory (storage.retention_seconds >= 1 h).
    timestamp_window: float = Field(default=300, gt=0, le=3600)
    max_body_bytes: int = Field(default=65536, gt=0, le=16 * 1024 * 1024)


def resolve_secrets(cfg: WebhookConfig, env: Mapping[str, str]) -> dict[str, bytes]:
    """Read every bot's HMAC secret; raise ConfigError naming the key path when one is missing or empty.

    Environment values are used verbatim (UTF-8). File contents have trailing CR/LF stripped, because
    editors and `echo` append a newline that the sending side would not include.
    """
    secrets: dict[str, bytes] = {}
    for bot_id, bot in cfg.bots.items():
        key = f"{KEY_PREFIX}.bots.{bot_id}"
        if bot.secret_env is not None:
            value = env.get(bot.secret_env)
            if value is None:
                raise ConfigError(f"{key}.secret_env: environment variable {bot.secret_env} is not set")
            if not value:
                raise ConfigError(f"{key}.secret_env: environment variable {bot.secret_env} is empty")
            secrets[bot_id] = value.encode("utf-8")
        else:
            assert bot.secret_file is not None  # guaranteed by WebhookBotConfig._exactly_one_secret
            try:
                data = bot.secret_file.read_bytes().rstrip(b"\r\n")
            except OSError as exc:
                raise ConfigError(f"{key}.secret_file: cannot read {bot.secret_file}: {exc.strerror or exc}") from None
            if not data:
                raise ConfigError(f"{key}.secret_file: {bot.secret_file} is empty")
            secrets[bot_id] = data
    return secrets
