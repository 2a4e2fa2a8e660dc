"""What a sandboxed run may use, and what came out of it.

The policy is data only, so the caller (gateway config + skill front matter) decides and the runner
enforces. Secrets are opt-in twice: the skill must declare `secrets:NAME` and the deployment must grant
NAME; anything else is never passed, because the research system this replaces leaked every gateway
secret to every chat user through an inherited environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

KillReason = Literal["timeout", "output_limit", "memory", "cpu", "file_size", "processes"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class SandboxPolicy:
    """Limits for one run. Defaults suit a small helper script on a 2-core box."""

    wall_timeout: float = 30.0  # seconds of real time before the whole sandbox is killed
    cpu_seconds: int = 20  # RLIMIT_CPU: SIGXCPU at the limit, SIGKILL one second later
    memory_bytes: int = 512 * MiB  # RLIMIT_AS: address space, so allocations fail with ENOMEM
    max_processes: int = 32  # pids cgroup when available, else RLIMIT_NPROC (see isolation.py)
    max_file_bytes: int = 64 * MiB  # RLIMIT_FSIZE: a larger write fails with EFBIG
    max_open_files: int = 256  # RLIMIT_NOFILE
    max_output_bytes: int = 1 * MiB  # stdout+stderr together; the run is killed when exceeded
    allow_network: bool = False  # only enforceable at the unshare/bwrap levels
    env_allow: tuple[str, ...] = ("LANG", "LC_ALL", "TZ")  # copied from the gateway's env if set
    secrets: Mapping[str, str] = field(default_factory=dict)  # granted secrets, passed as env vars
    extra_ro_paths: tuple[Path, ...] = ()  # more read-only mounts under bwrap (e.g. a data set)

    def for_skill(self, permissions: tuple[str, ...], granted: Mapping[str, str]) -> SandboxPolicy:
        """This policy adjusted to a skill's declared permissions (SkillMeta.permissions).

        `granted` is what the deployment's config allows skills to receive; a secret reaches the
        script only if it is in both.
        """
        return replace(
            self,
            allow_network="network" in permissions,
            secrets=grant_secrets(permissions, granted),
        )


def grant_secrets(permissions: tuple[str, ...], granted: Mapping[str, str]) -> dict[str, str]:
    """Secrets declared as `secrets:NAME` by the skill AND present in the deployment's grant."""
    wanted = {p.split(":", 1)[1].strip() for p in permissions if p.startswith("secrets:")}
    return {name: granted[name] for name in sorted(wanted) if name and name in granted}


@dataclass(frozen=True)
class RunResult:
    """Outcome of one sandboxed run. Output is capped, never buffered unbounded."""

    exit_code: int  # negative = killed by that signal number
    stdout: bytes
    stderr: bytes
    duration: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    killed_reason: KillReason | None = None  # which limit stopped the run (best effort for rlimits)

    @property
    def ok(self) -> bool:
        """True when the script exited 0 within every limit."""
        return self.exit_code == 0 and self.killed_reason is None

    @property
    def truncated(self) -> bool:
        """True when any output was cut off."""
        return self.stdout_truncated or self.stderr_truncated
