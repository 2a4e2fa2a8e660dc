"""DingTalk adapter: Stream mode or HTTP outgoing-robot callbacks in, sessionWebhook / robot OpenAPI out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from adapters.dingtalk.adapter import DingTalkAdapter
from adapters.dingtalk.config import DingTalkConfig, resolve_secrets
from gateway.errors import ConfigError

CONFIG_MODEL = DingTalkConfig

__all__ = ["CONFIG_MODEL", "DingTalkAdapter", "DingTalkConfig", "create"]


def create(raw_config: Mapping[str, Any], env: Mapping[str, str]) -> DingTalkAdapter:
    """Build the adapter; ConfigError names the exact key on bad config or a missing secret."""
    try:
        config = DingTalkConfig.model_validate(dict(raw_config))
    except ValidationError as exc:
        from gateway.config import format_validation_error

        raise ConfigError(format_validation_error(exc, "adapters.dingtalk.")) from exc
    return DingTalkAdapter(config, resolve_secrets(config, env))
