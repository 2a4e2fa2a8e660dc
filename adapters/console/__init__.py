"""Terminal chat adapter used by `switchboard chat` (and by `serve` in an interactive terminal)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from adapters.console.adapter import ConsoleAdapter, ConsoleConfig
from gateway.errors import ConfigError

CONFIG_MODEL = ConsoleConfig

__all__ = ["CONFIG_MODEL", "ConsoleAdapter", "ConsoleConfig", "create"]


def create(raw_config: Mapping[str, Any], env: Mapping[str, str]) -> ConsoleAdapter:
    """Build the adapter from its config section."""
    try:
        config = ConsoleConfig.model_validate(dict(raw_config))
    except ValidationError as exc:
        from gateway.config import format_validation_error

        raise ConfigError(format_validation_error(exc, "adapters.console.")) from exc
    return ConsoleAdapter(config, user_id=config.user_id or env.get("USER", "") or "local-user")
