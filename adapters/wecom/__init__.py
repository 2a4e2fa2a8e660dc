"""WeCom (企业微信) adapter: self-built apps over encrypted callbacks, AI bots over a long connection."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from adapters.wecom.adapter import WeComAdapter
from adapters.wecom.config import WeComConfig, resolve_secrets
from gateway.errors import ConfigError

CONFIG_MODEL = WeComConfig

__all__ = ["CONFIG_MODEL", "WeComAdapter", "WeComConfig", "create"]


def create(raw_config: Mapping[str, Any], env: Mapping[str, str]) -> WeComAdapter:
    """Build the adapter; ConfigError names the exact key on bad config or a missing secret."""
    try:
        config = WeComConfig.model_validate(dict(raw_config))
    except ValidationError as exc:
        from gateway.config import format_validation_error

        raise ConfigError(format_validation_error(exc, "adapters.wecom.")) from exc
    return WeComAdapter(config, resolve_secrets(config, env))
