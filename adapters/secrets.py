"""Secrets named in adapter config (`*_env` or `*_file`), resolved once at start with exact key paths.

Config files hold only references, never values, so a config can be committed or printed; a
missing secret fails the boot naming the key instead of failing on the first request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.errors import ConfigError


def resolve_secret(key_path: str, env_name: str | None, file: Path | None, env: Mapping[str, str]) -> str:
    """The secret named by `<key_path>_env` or `<key_path>_file`; ConfigError when absent or empty.

    File contents lose trailing CR/LF (editors and `echo` append them; the platform never includes them).
    """
    if env_name is not None:
        value = env.get(env_name)
        if value is None:
            raise ConfigError(f"{key_path}_env: environment variable {env_name} is not set")
        if not value:
            raise ConfigError(f"{key_path}_env: environment variable {env_name} is empty")
        return value
    if file is not None:
        try:
            data = file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{key_path}_file: cannot read {file}: {exc}") from None
        if not data:
            raise ConfigError(f"{key_path}_file: {file} is empty")
        return data
    raise ConfigError(f"{key_path}: set {key_path.rsplit('.', 1)[-1]}_env or {key_path.rsplit('.', 1)[-1]}_file")
