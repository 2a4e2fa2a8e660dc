"""Configuration: one YAML file plus SWITCHBOARD_* environment variables (env wins).

Secrets never live in the file: it names environment variables (`*_env`) or files (`*_file`).
Every section forbids unknown keys, so a typo fails at start with its exact key path.
Adapter sections stay raw here and are validated by each adapter's own config model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from agent_core.chat import DEFAULT_SYSTEM_PROMPT
from agent_core.llm import LLMProfile
from gateway.bus import PendingMode
from gateway.errors import ConfigError
from gateway.messages import SessionScope

CONFIG_ENV = "SWITCHBOARD_CONFIG"
DEFAULT_CONFIG_FILE = Path("switchboard.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    """The HTTP server for webhooks and ops endpoints."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    drain_seconds: float = Field(20.0, ge=0)


class StorageConfig(_Section):
    """Where state lives; `synchronous: FULL` fsyncs every commit (group commit keeps it cheap)."""

    data_dir: Path = Path("data")
    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    retention_seconds: float = Field(7 * 86400.0, ge=3600)


class BusConfig(_Section):
    """Turn scheduling."""

    max_concurrency: int = Field(32, ge=1)
    # While the event loop lags more than this, fewer turns start (down to 1) so acks stay fast.
    # 0 turns the adaptation off (always max_concurrency).
    turn_lag_target_ms: float = Field(2.0, ge=0)
    max_backlog: int = Field(10_000, ge=1)
    pending_mode: PendingMode = PendingMode.SEQUENTIAL
    max_attempts: int = Field(5, ge=1)


class OutboxConfig(_Section):
    """Reply delivery."""

    deadline_seconds: float = Field(3600.0, gt=0)
    base_backoff: float = Field(1.0, gt=0)
    max_backoff: float = Field(300.0, gt=0)
    send_timeout: float = Field(30.0, gt=0)
    max_in_flight: int = Field(64, ge=1)


class SessionsConfig(_Section):
    """Per-user sessions."""

    group_scope: SessionScope = SessionScope.PER_USER
    history_messages: int = Field(20, ge=0)
    idle_evict_seconds: float = Field(600.0, gt=0)
    max_cached: int = Field(10_000, ge=1)


class LLMConfig(_Section):
    """Named model profiles; `default` names the one used for chat."""

    default: str = "default"
    profiles: dict[str, LLMProfile] = Field(
        default_factory=lambda: {"default": LLMProfile(model="openai/gpt-4o-mini", api_key_env="OPENAI_API_KEY")}
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # "process": litellm runs in a child process so its CPU (~5 ms per call) stays off the ingest loop.
    isolation: Literal["process", "inline"] = "process"


class AgentConfig(_Section):
    """The tool-using turn: skills, roles, bounds. With `enabled: false` turns are plain chat."""

    enabled: bool = True
    skills_offered: int = Field(default=5, ge=0, le=50)
    max_steps: int = Field(default=8, ge=1, le=100)
    wall_seconds: float = Field(default=120.0, gt=0, le=3600)
    token_budget: int = Field(default=60_000, gt=0)
    # role -> members as "<platform>:<user id>", e.g. {"admin": ["chatapp:u_123"]}
    roles: dict[str, list[str]] = Field(default_factory=dict)
    # roles that may run skills declaring shell / fs-write / secrets:*
    privileged_roles: list[str] = Field(default_factory=lambda: ["admin"])
    # secrets skills may receive: NAME -> environment variable holding the value (a skill gets one only if it
    # declares `secrets:NAME` and the user may run it)
    secrets_env: dict[str, str] = Field(default_factory=dict)
    # which of those secrets each skill may receive: {skill name: [NAME, ...]}; unlisted skills get none,
    # so a skill rewritten or installed later cannot claim a secret just by declaring it
    skill_secrets: dict[str, list[str]] = Field(default_factory=dict)
    # skills that declare `network` get it only if this is true
    allow_network: bool = True
    # the weakest sandbox skills may run in: "rlimits" (anything, with a loud warning), "unshare" (network and
    # process isolation) or "bwrap" (filesystem too); below it, skill scripts are refused (chat still works)
    min_isolation: Literal["rlimits", "unshare", "bwrap"] = "rlimits"


class LoggingConfig(_Section):
    """Log output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(False, alias="json")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _default_adapters() -> dict[str, dict[str, Any]]:
    return {"webhook": {"enabled": True}}


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(env_prefix="SWITCHBOARD_", env_nested_delimiter="__", extra="forbid")

    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    bus: BusConfig = BusConfig()
    outbox: OutboxConfig = OutboxConfig()
    sessions: SessionsConfig = SessionsConfig()
    llm: LLMConfig = LLMConfig()
    agent: AgentConfig = AgentConfig()
    logging: LoggingConfig = LoggingConfig()
    adapters: dict[str, dict[str, Any]] = Field(default_factory=_default_adapters)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment overrides the YAML file (passed as init values); no .env file is read."""
        return (env_settings, init_settings)

    @property
    def database_path(self) -> Path:
        """The SQLite file."""
        return self.storage.data_dir / "switchboard.sqlite3"


def section_enabled(raw: Mapping[str, Any]) -> bool:
    """`enabled` of a raw adapter section; env overrides arrive as strings ("false" must mean False)."""
    try:
        return bool(TypeAdapter(bool).validate_python(raw.get("enabled", False)))
    except ValidationError:
        raise ConfigError(f"enabled: expected true or false, got {raw.get('enabled')!r}") from None


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per problem: `key.path: reason`."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}{path}" if path else prefix.rstrip(".") or "(root)"
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)


def config_path(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """The YAML file to read: --config, else $SWITCHBOARD_CONFIG, else ./switchboard.yaml if present."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None


def load_settings(path: Path | None) -> Settings:
    """Read and validate the configuration, raising ConfigError with exact key paths."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: the top level must be a mapping of sections")
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def json_schema(adapter_schemas: Mapping[str, dict[str, Any]]) -> str:
    """JSON Schema of the whole file, with each adapter's own section schema filled in."""
    schema = Settings.model_json_schema()
    schema["properties"]["adapters"] = {
        "type": "object",
        "properties": dict(adapter_schemas),
        "additionalProperties": False,
    }
    return json.dumps(schema, indent=2, ensure_ascii=False)


def env_snapshot() -> dict[str, str]:
    """The process environment, captured once at the composition root and passed down."""
    return dict(os.environ)
