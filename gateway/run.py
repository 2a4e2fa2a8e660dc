"""Process-level entry points behind the CLI: serve, chat, config schema."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import adapters as adapter_registry
from adapters.console import ConsoleAdapter
from gateway.app import Runtime
from gateway.config import Settings, config_path, env_snapshot, json_schema, load_settings, section_enabled
from gateway.logs import setup_logging

log = logging.getLogger(__name__)

NO_LLM_HINT = (
    "No LLM is configured yet, so the agent cannot answer. Set the API key environment variable named by "
    "llm.profiles.<name>.api_key_env (default OPENAI_API_KEY), or point llm.profiles.default.api_base at an "
    "OpenAI-compatible server, then restart. `switchboard doctor` shows what is missing."
)


def _secrets(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Every secret value the config points at (env vars and files), as the code will use it (stripped)."""
    names = [p.api_key_env for p in settings.llm.profiles.values() if p.api_key_env]
    files = [p.api_key_file for p in settings.llm.profiles.values() if p.api_key_file]
    for section in settings.adapters.values():
        names += _secret_refs(section, "_env")
        files += [Path(f) for f in _secret_refs(section, "_file")]
    values = [env.get(n, "") for n in names]
    for path in files:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            values.append(path.read_text(encoding="utf-8"))
    return [v.strip() for v in values if v.strip()]


def _secret_refs(section: Any, suffix: str) -> list[str]:
    """Values of every `*<suffix>` key in a nested adapter section (names of env vars or files)."""
    found: list[str] = []
    if isinstance(section, dict):
        for key, value in section.items():
            if str(key).endswith(suffix) and isinstance(value, str):
                found.append(value)
            else:
                found += _secret_refs(value, suffix)
    return found


def prepare(config: str | None, *, quiet: bool = False) -> tuple[Settings, dict[str, str]]:
    """Load settings and set up logging with the configured secrets redacted.

    `quiet` (the terminal chat) only shows warnings so log lines do not drown the conversation.
    """
    env = env_snapshot()
    settings = load_settings(config_path(config, env))
    level = "WARNING" if quiet and settings.logging.level in ("DEBUG", "INFO") else settings.logging.level
    setup_logging(level=level, json_format=settings.logging.json_format, secrets=_secrets(settings, env))
    return settings, env


def _interactive_foreground() -> bool:
    """Read the terminal only when we own it: `serve &` reading stdin would be stopped by SIGTTIN."""
    try:
        return sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve(config: str | None) -> int:
    """Run the service until SIGTERM/SIGINT, then drain."""
    settings, env = prepare(config)
    console_raw = settings.adapters.get("console", {})
    wanted = section_enabled({"enabled": True, **console_raw})
    settings.adapters["console"] = {**console_raw, "enabled": wanted and _interactive_foreground()}
    runtime = Runtime(settings, env)
    if not runtime.llm.is_configured():
        log.warning(NO_LLM_HINT)
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    await runtime.start()
    print(
        f"switchboard {os.environ.get('SWITCHBOARD_INSTANCE', '')}ready on port {runtime.port}".strip(),
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    log.info("stopping: draining for up to %.0fs", settings.server.drain_seconds)
    await runtime.stop()
    return 0


async def chat(config: str | None) -> int:
    """Terminal chat through the full pipeline (journal, bus, turn, outbox); no HTTP server."""
    settings, env = prepare(config, quiet=True)
    settings.server.enabled = False
    for section in settings.adapters.values():
        section["enabled"] = False
    console = adapter_registry.load("console").create(settings.adapters.get("console", {}), env)
    assert isinstance(console, ConsoleAdapter)
    runtime = Runtime(settings, env, adapters={"console": console})
    if not runtime.llm.is_configured():
        print(NO_LLM_HINT, file=sys.stderr)
    stop = asyncio.Event()
    _install_signal_handlers(stop)
    await runtime.start()
    closed = asyncio.create_task(console.input_closed.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    stopped.cancel()
    await runtime.stop()
    return 0


def print_schema() -> int:
    """Print the JSON Schema of the config, including every registered adapter's section."""
    schemas = {name: adapter_registry.load(name).CONFIG_MODEL.model_json_schema() for name in adapter_registry.REGISTRY}
    print(json_schema(schemas))
    return 0
