"""Per-run pids cgroup: the only process limit that holds for root and counts per run, not per uid.

RLIMIT_NPROC is ignored by Linux for root (and counts every process of the uid, gateway included),
so when a pids controller is writable each run gets its own cgroup with ``pids.max``. The child joins
it itself (the shim writes its pid before exec), so no fork can happen outside it. The cgroup also
lets the runner kill every process of the run, even ones that left the process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

_CANDIDATES = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
_PARENT = "switchboard-sandbox"


class PidsCgroup:
    """One run's cgroup directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def find_root() -> Path | None:
        """A parent directory where per-run pids cgroups can be created and used, or None."""
        for base in _CANDIDATES:
            parent = base / _PARENT
            try:
                parent.mkdir(exist_ok=True)
                if base.name != "pids":  # cgroup v2: the controller must be enabled for children
                    (parent / "cgroup.subtree_control").write_text("+pids")
                probe = PidsCgroup.create(parent, 1)
                probe.remove()
            except OSError:
                continue
            return parent
        return None

    @classmethod
    def create(cls, root: Path, max_pids: int) -> PidsCgroup:
        """Make a fresh cgroup below `root` allowing at most `max_pids` tasks."""
        path = root / f"run-{uuid.uuid4().hex}"
        path.mkdir()
        try:
            (path / "pids.max").write_text(str(max_pids))
        except OSError:
            path.rmdir()
            raise
        return cls(path)

    def pids(self) -> list[int]:
        """Processes currently in the cgroup."""
        try:
            text = (self.path / "cgroup.procs").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill_all(self) -> None:
        """SIGKILL everything in the cgroup (a few passes: a fork may land between read and kill)."""
        for _ in range(20):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Delete the cgroup; only possible once it is empty, so kill first."""
        self.kill_all()
        with contextlib.suppress(OSError):
            self.path.rmdir()
