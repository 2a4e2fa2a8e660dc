"""Configuration of the DingTalk adapter (one or more robots, each an app's AppKey/AppSecret)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from adapters.secrets import resolve_secret

KEY_PREFIX = "adapters.dingtalk"
OPENAPI_BASE = "https://api.dingtalk.com"  # token, stream connection, robot sends, cards, downloads

BotId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class DingTalkBotConfig(BaseModel):
    """One robot. HTTP outgoing-robot callbacks (if used) arrive at `/webhooks/dingtalk/<bot_id>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str = Field(min_length=1)  # the app's AppKey (Stream mode "clientId")
    client_secret_env: str | None = None  # AppSecret: signs HTTP callbacks, opens the stream, gets tokens
    client_secret_file: Path | None = None
    # The robot's code for OpenAPI sends; DingTalk's default robot of an app uses the AppKey.
    robot_code: str | None = None
    # Stream mode needs no public URL; "http" for robots configured with an outgoing message URL.
    inbound: Literal["stream", "http"] = "stream"
    # Groups: answer only when @-mentioned ("mention") or every message ("all"); per-conversation overrides.
    group_policy: Literal["mention", "all"] = "mention"
    group_policies: dict[str, Literal["mention", "all"]] = Field(default_factory=dict)
    # AI card template for streamed answers; without one, answers are sent as one markdown message.
    card_template_id: str | None = None
    # Answers still being written after this many seconds are shown in a streaming AI card.
    stream_after: float = Field(default=1.0, ge=0, le=60)

    @property
    def code(self) -> str:
        """The robotCode used for OpenAPI sends."""
        return self.robot_code or self.client_id


class DingTalkConfig(BaseModel):
    """The `adapters.dingtalk` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    openapi_base: str = OPENAPI_BASE
    # Where Stream connections are opened, when not `openapi_base` (a proxy, or a test's fake).
    stream_base: str | None = None
    bots: dict[BotId, DingTalkBotConfig] = Field(default_factory=dict)
    max_body_bytes: int = Field(default=256 * 1024, gt=0, le=4 * 1024 * 1024)
    # HTTP mode: DingTalk's `timestamp` header must be within this many seconds of our clock.
    timestamp_window: float = Field(default=3600, gt=0, le=86400)
    api_timeout: float = Field(default=10.0, gt=0, le=120)
    # Pictures, files and audio users send are downloaded into the attachment store up to this size.
    max_attachment_bytes: int = Field(default=20 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024)
    # DingTalk throttles a robot for 10 minutes past 20 messages a minute per conversation; stay under.
    messages_per_minute: float = Field(default=18.0, gt=0, le=20)
    card_updates_per_second: float = Field(default=4.0, gt=0, le=20)
    # Stream reconnect backoff (seconds): doubles from `reconnect_min` to `reconnect_max`, with jitter.
    reconnect_min: float = Field(default=1.0, gt=0, le=60)
    reconnect_max: float = Field(default=60.0, gt=0, le=600)
    # No frame (ping included) for this long means the socket is dead, whatever TCP says.
    stream_idle_timeout: float = Field(default=90.0, gt=0, le=3600)

    @field_validator("openapi_base", "stream_base")
    @classmethod
    def _origin(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError("must be an origin like https://api.dingtalk.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_entry_per_app(self) -> DingTalkConfig:
        """Two entries with one AppKey would open two Stream connections for it: DingTalk would then split
        the app's messages between them and each would be answered as a different bot."""
        seen: dict[str, str] = {}
        for bot_id, bot in self.bots.items():
            if bot.client_id in seen:
                raise ValueError(f"bots {seen[bot.client_id]!r} and {bot_id!r} use the same client_id")
            seen[bot.client_id] = bot_id
        return self


@dataclass(frozen=True)
class DingTalkSecrets:
    """One robot's resolved AppSecret."""

    client_secret: str


def resolve_secrets(cfg: DingTalkConfig, env: Mapping[str, str]) -> dict[str, DingTalkSecrets]:
    """Every robot's secret, or ConfigError naming the missing key."""
    out: dict[str, DingTalkSecrets] = {}
    for bot_id, bot in cfg.bots.items():
        key = f"{KEY_PREFIX}.bots.{bot_id}.client_secret"
        out[bot_id] = DingTalkSecrets(resolve_secret(key, bot.client_secret_env, bot.client_secret_file, env))
    return out
