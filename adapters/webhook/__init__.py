"""Generic signed-JSON webhook adapter: lets any internal system talk to the bot over HTTP.

See `adapter.py` for the protocol and `signing.py` for the signature scheme.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from adapters.webhook.adapter import WebhookAdapter
from adapters.webhook.config import KEY_PREFIX, WebhookBotConfig, WebhookConfig, resolve_secrets
from gateway.errors import ConfigError

CONFIG_MODEL = WebhookConfig

__all__ = ["CONFIG_MODEL", "WebhookAdapter", "WebhookBotConfig", "WebhookConfig", "create", "parse_config"]


def parse_config(raw_config: Mapping[str, Any]) -> WebhookConfig:
    """Validate the raw `adapters.webhook` mapping.

    ConfigError messages name full key paths, e.g. `adapters.webhook.bots.ops.timeout: ...`.
    """
    try:
        return WebhookConfig.model_validate(dict(raw_config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False, include_context=False):
            loc = [str(p) for p in err["loc"]]
            if loc and loc[-1] == "[key]":  # an invalid dict key (bot id): the path already names it
                loc.pop()
            path = ".".join([KEY_PREFIX, *loc])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: {msg}")
        raise ConfigError("; ".join(problems)) from None


def create(raw_config: Mapping[str, Any], env: Mapping[str, str]) -> WebhookAdapter:
    """Build the adapter from the raw `adapters.webhook` config section and the process environment.

    Raises ConfigError on invalid config or a missing/empty secret. Every configured bot's secret is
    resolved, so call it only when the section is enabled (`parse_config(raw).enabled`).
    """
    config = parse_config(raw_config)
    return WebhookAdapter(config, resolve_secrets(config, env))
