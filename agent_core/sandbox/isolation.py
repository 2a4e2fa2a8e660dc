"""Which kind of isolation this host can give a skill script, and what each kind protects against.

Levels, strongest first (probed at startup, never assumed):

* ``bwrap`` (bubblewrap works): fresh mount namespace built from scratch: /usr, the Python prefix,
  the skill folder and extra paths read-only, the user's workspace read-write, a private /tmp; the
  gateway's data dir, config, other users' workspaces and /root are simply absent. New network
  namespace (no interfaces but a down loopback) unless the skill has the ``network`` permission, new
  PID/IPC/UTS namespaces (cannot see or signal the gateway, cannot read /proc/<gateway>/environ), all
  capabilities dropped, new session (no TIOCSTI into our tty), dies with the gateway.
* ``unshare`` (util-linux ``unshare`` works): new network, PID (+ private /proc), mount, IPC and UTS
  namespaces, capabilities dropped with ``setpriv`` when present. Blocks network and hides the
  gateway's processes and their environ, but does NOT confine the filesystem: the script can read
  whatever the gateway's uid can (config files, data dir, other workspaces) and write where it can.
* ``rlimits`` (fallback): resource limits, scrubbed environment, cwd/HOME in the workspace. Protects
  against runaway CPU/memory/output/file size and against inheriting secrets via the environment.
  Does NOT block network, filesystem access, or reading /proc/<gateway pid>/environ of a same-uid
  gateway. Only for trusted skills; the runner warns loudly.

At every level the process count is capped by a pids cgroup when one is writable (root on a v1/v2
hierarchy); otherwise by RLIMIT_NPROC, which Linux ignores for root and counts per uid.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from agent_core.sandbox.cgroup import PidsCgroup

log = logging.getLogger(__name__)

_PROBE_TIMEOUT = 5.0


class IsolationLevel(enum.IntEnum):
    """Ordered so that a higher value means more isolation."""

    RLIMITS = 0
    UNSHARE = 1
    BWRAP = 2


@dataclass(frozen=True)
class IsolationReport:
    """Result of probing the host; `describe()` is what `switchboard doctor` prints."""

    level: IsolationLevel
    bwrap: str | None  # path of a working bwrap, else None
    unshare: str | None  # path of a working unshare, else None
    setpriv: str | None
    pids_cgroup: Path | None  # parent dir where per-run pids cgroups can be made
    euid: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def at(self, level: IsolationLevel) -> IsolationReport:
        """The same report forced down to a weaker level (for tests and cautious configs)."""
        if level > self.level:
            raise ValueError(f"isolation level {level.name} is not available here (best: {self.level.name})")
        return IsolationReport(level, self.bwrap, self.unshare, self.setpriv, self.pids_cgroup, self.euid, self.notes)

    @property
    def network_blocked(self) -> bool:
        """Whether a run without the network permission really has no network."""
        return self.level >= IsolationLevel.UNSHARE

    @property
    def filesystem_confined(self) -> bool:
        """Whether a run can only see its skill folder, workspace and system files."""
        return self.level >= IsolationLevel.BWRAP

    def describe(self) -> str:
        """Human-readable summary: active level, why, and what is and is not enforced."""
        lines = [f"sandbox isolation: {self.level.name.lower()}"]
        lines.append(f"  bwrap: {self.bwrap or 'not usable'}; unshare: {self.unshare or 'not usable'}")
        lines.append(f"  network blocked without permission: {'yes' if self.network_blocked else 'NO'}")
        lines.append(f"  filesystem confined to skill + workspace: {'yes' if self.filesystem_confined else 'NO'}")
        lines.append(f"  gateway processes/environ hidden: {'yes' if self.level >= IsolationLevel.UNSHARE else 'NO'}")
        if self.pids_cgroup is not None:
            lines.append(f"  process limit: pids cgroup under {self.pids_cgroup}")
        elif self.euid == 0:
            lines.append("  process limit: NONE (running as root, RLIMIT_NPROC is ignored, no writable pids cgroup)")
        else:
            lines.append("  process limit: RLIMIT_NPROC (counted per uid)")
        if self.level == IsolationLevel.RLIMITS:
            lines.append("  WARNING: rlimits only - rlimits cannot block network or file access; trusted skills only")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def _probe(argv: list[str]) -> str | None:
    """Run a probe command; None if it worked, else a short reason."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, timeout=_PROBE_TIMEOUT, check=False, env={"PATH": "/usr/bin:/bin"}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}"
    if proc.returncode != 0:
        return f"{argv[0]} exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[:200]}"
    return None


def detect_isolation() -> IsolationReport:
    """Probe bwrap, then unshare, then fall back to rlimits. Blocking (~0.1 s): call once at startup."""
    euid = os.geteuid()
    notes: list[str] = []
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        notes.append("bwrap not installed (Debian: apt-get install bubblewrap)")
    else:
        probe = [bwrap, "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"]
        probe += ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL", "--", "/usr/bin/true"]
        reason = _probe(probe)
        if reason:
            notes.append(f"bwrap present but not working: {reason}")
            bwrap = None
    unshare = shutil.which("unshare")
    if unshare is not None:
        argv = [unshare, *unshare_flags(euid, allow_network=False), "/usr/bin/true"]
        reason = _probe(argv)
        if reason:
            notes.append(f"unshare present but not working: {reason}")
            unshare = None
    setpriv = shutil.which("setpriv")
    if setpriv is not None and _probe([setpriv, *SETPRIV_FLAGS, "/usr/bin/true"]):
        setpriv = None
    cgroup = PidsCgroup.find_root()
    if cgroup is None:
        notes.append("no writable pids cgroup")
    level = IsolationLevel.BWRAP if bwrap else IsolationLevel.UNSHARE if unshare else IsolationLevel.RLIMITS
    return IsolationReport(level, bwrap, unshare, setpriv, cgroup, euid, tuple(notes))


SETPRIV_FLAGS = ("--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--")


def unshare_flags(euid: int, *, allow_network: bool) -> list[str]:
    """Flags for util-linux unshare: private pid/mount/ipc/uts (+net) namespaces, child killed with us."""
    flags = ["--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--ipc", "--uts"]
    if not allow_network:
        flags.append("--net")
    if euid != 0:
        flags += ["--user", "--map-root-user"]
    return [*flags, "--"]


def log_level_warning(report: IsolationReport) -> None:
    """The loud warning for the rlimits-only fallback."""
    if report.level == IsolationLevel.RLIMITS:
        log.warning(
            "!!! SKILL SANDBOX IS RLIMITS-ONLY: skill scripts can use the network and read any file the gateway "
            "can read. Install bubblewrap (apt-get install bubblewrap) before running untrusted skills. !!!"
        )
