"""Feishu / Lark adapter: long connection or HTTP callbacks in, replies and streaming cards out."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from adapters.feishu.adapter import FeishuAdapter
from adapters.feishu.config import FeishuConfig, resolve_secrets
from gateway.errors import ConfigError

CONFIG_MODEL = FeishuConfig

__all__ = ["CONFIG_MODEL", "FeishuAdapter", "FeishuConfig", "create"]


def create(raw_config: Mapping[str, Any], env: Mapping[str, str]) -> FeishuAdapter:
    """Build the adapter; ConfigError names the exact key on bad config or a missing secret."""
    try:
        config = FeishuConfig.model_validate(dict(raw_config))
    except ValidationError as exc:
        from gateway.config import format_validation_error

        raise ConfigError(format_validation_error(exc, "adapters.feishu.")) from exc
    return FeishuAdapter(config, resolve_secrets(config, env))
