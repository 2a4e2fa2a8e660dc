"""WeChat Official Account (公众号) adapter: signed/encrypted XML callbacks, passive or pushed replies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from adapters.wechat.adapter import WeChatAdapter
from adapters.wechat.config import WeChatConfig, resolve_secrets
from gateway.errors import ConfigError

CONFIG_MODEL = WeChatConfig

__all__ = ["CONFIG_MODEL", "WeChatAdapter", "WeChatConfig", "create"]


def create(raw_config: Mapping[str, Any], env: Mapping[str, str]) -> WeChatAdapter:
    """Build the adapter; ConfigError names the exact key on bad config or a missing secret."""
    try:
        config = WeChatConfig.model_validate(dict(raw_config))
    except ValidationError as exc:
        from gateway.config import format_validation_error

        raise ConfigError(format_validation_error(exc, "adapters.wechat.")) from exc
    return WeChatAdapter(config, resolve_secrets(config, env))
