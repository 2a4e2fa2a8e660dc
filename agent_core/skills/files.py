"""The files of a skill folder: safe enumeration, content hash, durable copy, static checks.

Skills come from people and from the agent itself, so a folder is treated as untrusted input: a
symlink or special file could make a later reader leave the folder (Memento-Skills unpacked
archives without such checks), and an unbounded folder could fill the disk. Enumeration refuses
both, and the copy reuses the same enumeration so what was checked is exactly what is published.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from agent_core.skills.parse import SKILL_FILE, SkillError, read_skill_dir

MAX_FILES = 200
MAX_TOTAL_BYTES = 5 * 1024 * 1024
# Tool and VCS droppings: never part of a skill's content (a git clone brings `.git`).
IGNORED_NAMES = frozenset({".git", ".hg", ".svn", "__pycache__", ".DS_Store", ".pytest_cache", ".mypy_cache"})
IGNORED_SUFFIXES = (".pyc", ".pyo")
SCRIPT_REF_RE = re.compile(r"(?<![\w./-])scripts/[\w./-]*\w")


@dataclass(frozen=True)
class SkillFile:
    """One regular file of a skill: its path relative to the folder (POSIX form) and its location."""

    rel: str
    path: Path
    size: int
    executable: bool


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def list_files(folder: Path) -> list[SkillFile]:
    """Every regular file under `folder`, sorted; raises SkillError on symlinks, specials or size limits."""
    if folder.is_symlink() or not folder.is_dir():
        raise SkillError(["not a folder (a skill is a folder with a SKILL.md file)"], where=str(folder))
    problems: list[str] = []
    found: list[SkillFile] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        base = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        for name in [*dirnames, *filenames]:
            if _ignored(name):
                continue
            path = base / name
            rel = path.relative_to(folder).as_posix()
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                problems.append(f"{rel}: symlinks are not allowed (they can point outside the skill)")
            elif stat.S_ISDIR(info.st_mode):
                continue
            elif not stat.S_ISREG(info.st_mode):
                problems.append(f"{rel}: only regular files are allowed")
            else:
                total += info.st_size
                found.append(SkillFile(rel, path, info.st_size, bool(info.st_mode & stat.S_IXUSR)))
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
    if len(found) > MAX_FILES:
        problems.append(f"{len(found)} files, at most {MAX_FILES} allowed")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"{total} bytes in total, at most {MAX_TOTAL_BYTES // (1024 * 1024)} MB allowed")
    if problems:
        raise SkillError(problems, where=str(folder))
    return sorted(found, key=lambda f: f.rel)


def content_hash(files: list[SkillFile]) -> str:
    """sha256 over (path, executable bit, bytes) of every file: equal hash = identical published skill."""
    digest = hashlib.sha256()
    for f in files:
        data = f.path.read_bytes()
        digest.update(f"{f.rel}\0{int(f.executable)}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def hash_folder(folder: Path) -> str:
    """Content hash of a folder on disk."""
    return content_hash(list_files(folder))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_files(files: list[SkillFile], dest: Path) -> None:
    """Copy into `dest` (which must not exist) and fsync every file and folder; files become read-only."""
    dest.mkdir(parents=True)
    dirs = {dest}
    for f in files:
        target = dest / f.rel
        target.parent.mkdir(parents=True, exist_ok=True)
        dirs.update(p for p in target.parents if dest in (p, *p.parents))
        fd = os.open(f.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as src, open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(target, 0o555 if f.executable else 0o444)
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(d)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    _fsync_dir(path)


def referenced_scripts(instructions: str) -> set[str]:
    """`scripts/...` paths the instructions mention; each must exist in the folder."""
    return {m.group(0).rstrip(".") for m in SCRIPT_REF_RE.finditer(instructions)}


def static_problems(folder: Path) -> list[str]:
    """Everything wrong with a folder that can be found without running it (empty list = fine)."""
    try:
        files = list_files(folder)
        _, instructions = read_skill_dir(folder)
    except SkillError as exc:
        return list(exc.problems)
    present = {f.rel for f in files}
    problems: list[str] = []
    if SKILL_FILE not in present:
        problems.append(f"{SKILL_FILE} not found")
    for ref in sorted(referenced_scripts(instructions)):
        if ".." in ref.split("/"):
            problems.append(f"{SKILL_FILE} refers to {ref}, which leaves the skill folder")
        elif ref not in present and not any(p.startswith(ref.rstrip("/") + "/") for p in present):
            problems.append(f"{SKILL_FILE} refers to {ref}, which does not exist")
    return problems
