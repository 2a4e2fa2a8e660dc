"""Turning a policy + isolation level into the exact argv and environment of a sandboxed run.

Kept separate from the runner so the command lines can be read (and tested) without starting
anything, and so `switchboard doctor` can show what a run would execute.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from agent_core.sandbox.isolation import SETPRIV_FLAGS, IsolationLevel, IsolationReport, unshare_flags
from agent_core.sandbox.policy import SandboxPolicy
from agent_core.sandbox.shim import shim_argv

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"

# System files a Python script commonly needs (TLS roots, DNS, locale, users); all read-only.
_ETC_FILES = (
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/mime.types",
)


def build_env(policy: SandboxPolicy, workspace: Path, skill_dir: Path, python_bin: Path | None) -> dict[str, str]:
    """A fresh environment: never a copy of the gateway's, which holds its tokens and keys."""
    path = SAFE_PATH if python_bin is None else f"{python_bin}:{SAFE_PATH}"
    env = {
        "PATH": path,
        "LANG": "C.UTF-8",
        "HOME": str(workspace),
        "TMPDIR": str(workspace / "tmp"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "SKILL_DIR": str(skill_dir),
    }
    for name in policy.env_allow:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(policy.secrets)
    return env


def rlimits(policy: SandboxPolicy) -> dict[str, tuple[int, int]]:
    """Limits applied by the shim. CPU hard = soft + 1 so SIGXCPU comes first, SIGKILL as backstop."""
    return {
        "RLIMIT_CPU": (policy.cpu_seconds, policy.cpu_seconds + 1),
        "RLIMIT_AS": (policy.memory_bytes, policy.memory_bytes),
        "RLIMIT_FSIZE": (policy.max_file_bytes, policy.max_file_bytes),
        "RLIMIT_NPROC": (policy.max_processes, policy.max_processes),
        "RLIMIT_NOFILE": (policy.max_open_files, policy.max_open_files),
        "RLIMIT_CORE": (0, 0),
    }


def _venv_root(executable: str) -> Path | None:
    """The virtualenv containing `executable`, so bwrap can mount it (it holds the skill's packages)."""
    candidate = Path(executable).parent.parent
    return candidate if (candidate / "pyvenv.cfg").is_file() else None


def _bwrap_args(
    report: IsolationReport, policy: SandboxPolicy, skill_dir: Path, workspace: Path, command: list[str]
) -> list[str]:
    assert report.bwrap is not None
    args = [report.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if policy.allow_network:
        args.append("--share-net")
    args += ["--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for link in ("bin", "sbin", "lib", "lib64", "lib32"):
        if Path("/" + link).is_symlink():
            args += ["--symlink", os.readlink("/" + link), "/" + link]
        elif Path("/" + link).is_dir():
            args += ["--ro-bind", "/" + link, "/" + link]
    for etc in _ETC_FILES:
        args += ["--ro-bind-try", etc, etc]
    ro: list[Path] = [Path(os.path.realpath(sys.base_prefix)), skill_dir]
    venv = _venv_root(command[0])
    if venv is not None:
        ro += [venv, Path(os.path.realpath(venv))]
    ro.append(Path(os.path.realpath(command[0])).parent)
    ro += list(policy.extra_ro_paths)
    for path in dict.fromkeys(ro):
        args += ["--ro-bind-try", str(path), str(path)]
    args += ["--bind", str(workspace), str(workspace), "--chdir", str(workspace), "--"]
    return args


def build_argv(
    report: IsolationReport,
    policy: SandboxPolicy,
    *,
    skill_dir: Path,
    workspace: Path,
    command: list[str],
    cgroup: Path | None,
) -> list[str]:
    """Outer shim (cgroup + rlimits) -> namespace wrapper for the level -> command."""
    outer: dict[str, Any] = {"limits": rlimits(policy), "cgroup": str(cgroup) if cgroup else None}
    level = report.level
    # Without a userns-per-run or cgroup, NPROC counts all of the uid's processes: allow headroom over them.
    outer["nproc_relative"] = cgroup is None and report.euid != 0
    if level == IsolationLevel.BWRAP:
        inner = [*_bwrap_args(report, policy, skill_dir, workspace, command), *command]
    elif level == IsolationLevel.UNSHARE:
        assert report.unshare is not None
        inner = [report.unshare, *unshare_flags(report.euid, allow_network=policy.allow_network)]
        if report.setpriv is not None:
            inner += [report.setpriv, *SETPRIV_FLAGS]
        inner += shim_argv({"init": True}, command)
    else:
        inner = command
    return shim_argv(outer, inner)
