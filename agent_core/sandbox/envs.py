"""Per-skill-version virtualenvs, created once and cached.

A skill's requirements are installed into a venv keyed by skill name + version hash, so versions
never share (or corrupt) each other's packages and a published version's env is built only once.
pip runs with a scrubbed environment (no gateway secrets for a malicious setup step to read) and
``--only-binary=:all:`` so installing never executes a package's build script on the gateway host.
Creation goes to a temporary directory that is renamed into place, so a crash or timeout never
leaves a half-built env that looks ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from agent_core.sandbox.launch import SAFE_PATH

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class EnvBuildError(RuntimeError):
    """venv creation or pip install failed or timed out."""


class SkillEnvCache:
    """Cache dir of venvs: `<cache_dir>/<name>-<hash16>/`."""

    def __init__(self, cache_dir: Path, *, pip_timeout: float = 300.0, base_python: str | None = None) -> None:
        self.cache_dir = cache_dir
        self.pip_timeout = pip_timeout
        self.base_python = base_python or sys.executable
        self._locks: dict[str, asyncio.Lock] = {}

    def env_dir(self, skill_name: str, version_hash: str, requirements: Sequence[str]) -> Path:
        """Where the env for this skill version lives (requirements are part of the key too)."""
        digest = hashlib.sha256("\n".join([version_hash, *requirements]).encode()).hexdigest()[:16]
        name = _SAFE.sub("_", skill_name).strip("._")[:60] or "skill"
        return self.cache_dir / f"{name}-{digest}"

    async def ensure_env(self, skill_name: str, version_hash: str, requirements: Sequence[str]) -> Path:
        """Path of the env's python, creating the env on first use."""
        target = self.env_dir(skill_name, version_hash, requirements)
        python = target / "bin" / "python"
        lock = self._locks.setdefault(target.name, asyncio.Lock())
        async with lock:
            if (target / ".ready").is_file():
                return python
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            staging = self.cache_dir / f".build-{target.name}-{uuid.uuid4().hex[:8]}"
            try:
                await self._build(staging, list(requirements))
                # venv scripts embed their path, so build in place of the final name via rename only.
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
            return python

    async def _build(self, staging: Path, requirements: list[str]) -> None:
        venv_args = ["-m", "venv", "--without-pip", str(staging)]
        await self._run([self.base_python, *venv_args], limit_s=120)
        if requirements:
            staging_python = str(staging / "bin" / "python")
            pip = [self.base_python, "-m", "pip", "--python", staging_python, "install", "--no-input"]
            pip += ["--disable-pip-version-check", "--only-binary=:all:", "--no-cache-dir", "--", *requirements]
            await self._run(pip, limit_s=self.pip_timeout)
        (staging / ".ready").write_text("\n".join(requirements) + "\n")

    @staticmethod
    async def _run(argv: list[str], *, limit_s: float) -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8", "PIP_NO_INPUT": "1"},
            start_new_session=True,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=limit_s)
        except TimeoutError as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise EnvBuildError(f"{argv[1:3]} timed out after {limit_s}s") from exc
        if proc.returncode != 0:
            raise EnvBuildError(
                f"{' '.join(argv[:4])}... exited {proc.returncode}: {out[-2000:].decode(errors='replace')}"
            )
