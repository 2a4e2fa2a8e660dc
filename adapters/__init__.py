"""Adapter registry: the only place platforms are listed.

Each entry names a package exposing `CONFIG_MODEL` (pydantic model of its config section) and
`create(raw_config, env) -> Adapter`. Packages are imported only when enabled, so a heavy SDK
never slows down start-up or `--help` for people who don't use that platform.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Protocol, cast

from pydantic import BaseModel

from adapters.base import Adapter

REGISTRY: dict[str, str] = {
    "console": "adapters.console",
    "dingtalk": "adapters.dingtalk",
    "feishu": "adapters.feishu",
    "webhook": "adapters.webhook",
    "wechat": "adapters.wechat",
    "wecom": "adapters.wecom",
}


class AdapterModule(Protocol):
    """What every adapter package exports."""

    CONFIG_MODEL: type[BaseModel]

    def create(self, raw_config: Mapping[str, Any], env: Mapping[str, str]) -> Adapter: ...


def load(name: str) -> AdapterModule:
    """Import the adapter package registered under `name`."""
    try:
        module_path = REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"unknown adapter '{name}' (known: {known})") from None
    return cast(AdapterModule, importlib.import_module(module_path))
