"""File access inside a user's workspace that no symlink can redirect.

Sandboxed scripts write into the same workspace, so they can plant symlinks; a check on the resolved
path followed by an open by path could be raced (swap a component between check and open). Here every
component is opened relative to the previous directory's descriptor with O_NOFOLLOW, so the kernel
refuses a symlink at any step, and only regular files are read or written. Blocking: call in a thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path, PurePosixPath


class WorkspacePathError(ValueError):
    """The path leaves the workspace, crosses a symlink, or names something that is not a regular file."""


def _parts(relative: str) -> list[str]:
    path = PurePosixPath(relative)
    if path.is_absolute():
        raise WorkspacePathError("paths are relative to your workspace")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise WorkspacePathError("paths must stay inside your workspace")
    return parts


def _open_dir(root: Path, parts: list[str], *, create: bool) -> int:
    """A descriptor of the directory holding the final component (created on demand for writes)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o700, dir_fd=fd)
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except (NotADirectoryError, FileNotFoundError, OSError) as exc:
                raise WorkspacePathError(f"no such folder in your workspace ({type(exc).__name__})") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_text(root: Path, relative: str, limit: int) -> tuple[str, bool]:
    """Up to `limit` bytes of a regular file (decoded leniently) and whether it was longer."""
    parts = _parts(relative)
    dir_fd = _open_dir(root, parts, create=False)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
        except OSError as exc:
            raise WorkspacePathError(f"no such file in your workspace ({type(exc).__name__})") from None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise WorkspacePathError("not a regular file")
        data = fh.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def write_bytes(root: Path, relative: str, data: bytes) -> str:
    """Create or replace a regular file; returns the normalized relative path."""
    parts = _parts(relative)
    dir_fd = _open_dir(root, parts, create=True)
    try:
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            raise WorkspacePathError(f"cannot write there ({type(exc).__name__})") from None
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "wb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise WorkspacePathError("not a regular file")
        fh.write(data)
    return "/".join(parts)
