"""Run one skill script for one chat user, isolated from the gateway and from other users.

Everything is asyncio: the gateway's loop never blocks on a script. Output is read in chunks and
capped; when the cap or the wall timeout is hit the whole run is killed (its process group, its PID
namespace via bwrap/unshare dying with their parent, and its pids cgroup when there is one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from agent_core.sandbox.cgroup import PidsCgroup
from agent_core.sandbox.isolation import IsolationLevel, IsolationReport, detect_isolation, log_level_warning
from agent_core.sandbox.launch import build_argv, build_env
from agent_core.sandbox.policy import KillReason, RunResult, SandboxPolicy

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
_SIGNAL_REASONS: dict[int, KillReason] = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "file_size"}
_STDERR_REASONS: tuple[tuple[bytes, KillReason], ...] = (
    (b"MemoryError", "memory"),
    (b"Cannot allocate memory", "memory"),
    (b"File too large", "file_size"),
    (b"Resource temporarily unavailable", "processes"),
)


def workspace_name(user_key: str) -> str:
    """Directory name for a user: a hash, so no user_key can contain '..', '/', or collide by case."""
    return hashlib.sha256(b"switchboard-workspace\0" + user_key.encode("utf-8")).hexdigest()[:40]


class _Capture:
    """stdout+stderr under one shared byte budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.parts: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated: dict[str, bool] = {"stdout": False, "stderr": False}
        self.overflow = asyncio.Event()

    async def pump(self, name: str, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK):
            room = self.limit - self.used
            if len(chunk) > room:
                # Keep draining (and dropping) until EOF: asyncio only reports the exit once pipes close,
                # and the run is being killed, so this ends as soon as its writers are dead.
                self.parts[name] += chunk[: max(room, 0)]
                self.used = self.limit
                self.truncated[name] = True
                self.overflow.set()
                continue
            self.parts[name] += chunk
            self.used += len(chunk)


class SandboxRunner:
    """Runs skill scripts under the strongest isolation detected on this host."""

    def __init__(
        self,
        workspaces_root: Path,
        default_policy: SandboxPolicy | None = None,
        *,
        isolation: IsolationReport | None = None,
        max_concurrent: int = 4,
    ) -> None:
        self.workspaces_root = workspaces_root
        self.default_policy = default_policy or SandboxPolicy()
        self.isolation = isolation or detect_isolation()
        self._slots = asyncio.Semaphore(max_concurrent)
        workspaces_root.mkdir(parents=True, exist_ok=True, mode=0o711)
        log_level_warning(self.isolation)

    def describe(self) -> str:
        """For `switchboard doctor`."""
        return self.isolation.describe()

    def workspace(self, user_key: str) -> Path:
        """The user's private, persistent workspace (0700), created on first use."""
        if not user_key:
            raise ValueError("user_key must not be empty")
        path = self.workspaces_root / workspace_name(user_key)
        path.mkdir(mode=0o700, exist_ok=True)
        if path.is_symlink() or not path.is_dir():
            raise RuntimeError(f"workspace {path} is not a plain directory")
        path.chmod(0o700)
        (path / "tmp").mkdir(mode=0o700, exist_ok=True)
        return path

    def _prepare(
        self, user_key: str, skill_dir: Path, command: list[str], policy: SandboxPolicy
    ) -> tuple[Path, Path, list[str], dict[str, str]]:
        """Synchronous, cheap setup: resolved paths, the user's workspace, the scrubbed env."""
        skill_dir = Path(os.path.realpath(skill_dir))
        workspace = self.workspace(user_key)
        argv_cmd = self._resolve(command, skill_dir)
        python_bin = Path(argv_cmd[0]).parent if Path(argv_cmd[0]).name.startswith("python") else None
        return skill_dir, workspace, argv_cmd, build_env(policy, workspace, skill_dir, python_bin)

    def _resolve(self, command: list[str], skill_dir: Path) -> list[str]:
        """Absolute executable; relative args naming a file of the skill become absolute (cwd is the workspace)."""
        if not command:
            raise ValueError("empty command")
        exe = command[0] if os.path.isabs(command[0]) else shutil.which(command[0], path="/usr/local/bin:/usr/bin:/bin")
        if exe is None:
            raise FileNotFoundError(command[0])
        args = [exe]
        for arg in command[1:]:
            candidate = (skill_dir / arg).resolve()
            inside = candidate.is_relative_to(skill_dir) and not os.path.isabs(arg)
            args.append(str(candidate) if inside and candidate.exists() else arg)
        return args

    async def run(
        self,
        *,
        user_key: str,
        skill_dir: Path,
        command: list[str],
        stdin_json: str = "",
        policy: SandboxPolicy | None = None,
    ) -> RunResult:
        """Run `command` in `skill_dir` for `user_key`, feeding `stdin_json` on stdin."""
        policy = policy or self.default_policy
        skill_dir, workspace, argv_cmd, env = self._prepare(user_key, skill_dir, command, policy)
        async with self._slots:
            cgroup = await self._make_cgroup(policy)
            try:
                argv = build_argv(
                    self.isolation,
                    policy,
                    skill_dir=skill_dir,
                    workspace=workspace,
                    command=argv_cmd,
                    cgroup=cgroup.path if cgroup else None,
                )
                return await self._execute(argv, env, workspace, stdin_json.encode("utf-8"), policy, cgroup)
            finally:
                if cgroup is not None:
                    await self._remove_cgroup(cgroup)

    async def _make_cgroup(self, policy: SandboxPolicy) -> PidsCgroup | None:
        if self.isolation.pids_cgroup is None:
            return None
        try:
            # bwrap (parent + its PID-1) or unshare (+ our init shim) are tasks too; the script gets max_processes.
            overhead = 0 if self.isolation.level == IsolationLevel.RLIMITS else 2
            return PidsCgroup.create(self.isolation.pids_cgroup, policy.max_processes + overhead)
        except OSError as exc:
            log.warning("sandbox: cannot create pids cgroup (%s); relying on RLIMIT_NPROC", exc)
            return None

    @staticmethod
    async def _remove_cgroup(cgroup: PidsCgroup) -> None:
        for _ in range(50):
            cgroup.remove()
            if not cgroup.path.exists():
                return
            await asyncio.sleep(0.02)
        log.warning("sandbox: cgroup %s not removable", cgroup.path)

    async def _execute(
        self,
        argv: list[str],
        env: dict[str, str],
        workspace: Path,
        stdin: bytes,
        policy: SandboxPolicy,
        cgroup: PidsCgroup | None,
    ) -> RunResult:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=workspace,
            start_new_session=True,  # own process group, so one killpg reaches every descendant
            close_fds=True,
        )
        assert proc.stdin and proc.stdout and proc.stderr
        capture = _Capture(policy.max_output_bytes)
        pumps: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(capture.pump("stdout", proc.stdout)),
            asyncio.ensure_future(capture.pump("stderr", proc.stderr)),
        ]
        feeder: asyncio.Future[Any] = asyncio.ensure_future(self._feed(proc.stdin, stdin))
        finished: asyncio.Future[Any] = asyncio.ensure_future(asyncio.gather(*pumps, proc.wait()))
        overflow: asyncio.Future[Any] = asyncio.ensure_future(capture.overflow.wait())
        reason: KillReason | None = None
        try:
            done, _ = await asyncio.wait(
                {finished, overflow}, timeout=policy.wall_timeout, return_when="FIRST_COMPLETED"
            )
            if finished not in done:
                reason = "output_limit" if overflow in done else "timeout"
        finally:
            overflow.cancel()
            # Always: a script must not leave daemons behind once its run is over.
            self._kill(proc, cgroup)
            # After a kill the pipes close once every writer is dead; don't wait forever for stragglers.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=5)
            for task in (*pumps, feeder, finished):
                task.cancel()
            await asyncio.gather(*pumps, feeder, finished, return_exceptions=True)
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        if code > 128 and self.isolation.level > IsolationLevel.RLIMITS:
            code = -(code - 128)  # bwrap/our init report a signal death as 128+N
        stderr = bytes(capture.parts["stderr"])
        reason = reason or _classify(code, stderr)
        return RunResult(
            exit_code=code,
            stdout=bytes(capture.parts["stdout"]),
            stderr=stderr,
            duration=time.monotonic() - started,
            stdout_truncated=capture.truncated["stdout"],
            stderr_truncated=capture.truncated["stderr"],
            killed_reason=reason,
        )

    @staticmethod
    async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            writer.write(data)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

    @staticmethod
    def _kill(proc: asyncio.subprocess.Process, cgroup: PidsCgroup | None) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if cgroup is not None:
            cgroup.kill_all()


def _classify(code: int, stderr: bytes) -> KillReason | None:
    """Which limit stopped a run that we did not kill ourselves (best effort: rlimits only signal or fail)."""
    if code == 0:
        return None
    if code < 0 and -code in _SIGNAL_REASONS:
        return _SIGNAL_REASONS[-code]
    if code == -signal.SIGKILL:
        return "cpu"  # the RLIMIT_CPU hard limit is the only SIGKILL we don't send ourselves (besides OOM)
    tail = stderr[-4096:]
    for needle, reason in _STDERR_REASONS:
        if needle in tail:
            return reason
    return None
