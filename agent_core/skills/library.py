"""SkillLibrary: immutable skill versions on disk, an index in SQLite, and change notifications.

Layout under `root`:
    versions/<name>/<content_hash>/   one published version, never modified (files are read-only)
    tmp/                              staging; anything here is an interrupted install and is swept
    index.sqlite3                     versions, the active pointer, the event log

A version is staged in `tmp/`, fsynced, then renamed into `versions/` in one step, and only then
recorded in the index. Readers go through the index, so they either see the old version or the
complete new one, never a half-written folder, and a crash at any point leaves the library valid.
Methods are synchronous (disk + SQLite); async callers use `asyncio.to_thread`.
"""

from __future__ import annotations

import builtins
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent_core.skills import index
from agent_core.skills.files import (
    SkillFile,
    content_hash,
    copy_files,
    fsync_dir,
    hash_folder,
    list_files,
    static_problems,
)
from agent_core.skills.index import VersionInfo
from agent_core.skills.model import Skill, SkillCard, SkillMeta
from agent_core.skills.parse import SkillError, read_skill_dir
from agent_core.skills.sources import checkout, is_git_url

log = logging.getLogger(__name__)


class SkillNotFound(KeyError):
    """No such skill, or no such version of it."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "skill not found"


@dataclass(frozen=True)
class SkillChange:
    """What changed, for listeners such as the router index (`card` is None when the skill was removed)."""

    name: str
    action: str  # install | activate | rollback | remove
    card: SkillCard | None
    content_hash: str | None
    revision: int


Listener = Callable[[SkillChange], None]


class SkillLibrary:
    """The shared skill library rooted at `root` (created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._versions = root / "versions"
        self._tmp = root / "tmp"
        self._db_path = root / "index.sqlite3"
        self._write_lock = threading.Lock()
        self._listeners: builtins.list[Listener] = []
        self._versions.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        with closing(index.connect(self._db_path)) as conn:
            index.migrate(conn)
        self._sweep_tmp()

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection: cheap in SQLite and safe to use from any thread."""
        with closing(index.connect(self._db_path)) as conn:
            yield conn

    def _sweep_tmp(self) -> None:
        """Remove staging folders of interrupted installs; a live process's (the CLI's) stage is left alone."""
        for leftover in self._tmp.iterdir():
            if not _owner_alive(leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)

    def _skill(self, name: str, digest: str) -> Skill:
        path = self._versions / name / digest
        meta, instructions = read_skill_dir(path)
        return Skill(meta=meta, instructions=instructions, path=path, content_hash=digest)

    def _notify(self, change: SkillChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:  # a broken listener must not undo or hide a committed change
                log.exception("skill listener failed for %s %s", change.action, change.name)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` after every committed change made through this object; returns an unsubscribe.

        Listeners run on the writing thread, in commit order, and must not write to the library.
        Changes made by other processes (the CLI) are visible through `revision()`.
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ------------------------------------------------------------------ reads

    def get(self, name: str) -> Skill:
        """The active version of `name`; raises SkillNotFound."""
        with self._conn() as conn:
            row = index.active_row(conn, name)
        if row is None:
            raise SkillNotFound(f"no active skill named {name!r}")
        return self._skill(name, row[0])

    def version(self, name: str, ref: str) -> Skill:
        """A specific version, by label (e.g. '1.2.0') or content-hash prefix (at least 6 characters)."""
        with self._conn() as conn:
            return self._skill(name, self._resolve(conn, name, ref))

    def list(self) -> builtins.list[SkillMeta]:
        """Metadata of every active skill, sorted by name."""
        with self._conn() as conn:
            return index.active_metas(conn)

    def cards(self) -> builtins.list[SkillCard]:
        """The routing view of every active skill (what the router's index is rebuilt from)."""
        return [meta.card() for meta in self.list()]

    def history(self, name: str) -> builtins.list[VersionInfo]:
        """Every version of `name`, oldest first (empty if never installed)."""
        with self._conn() as conn:
            return index.history(conn, name)

    def names(self) -> set[str]:
        """Every skill ever installed, including removed ones."""
        with self._conn() as conn:
            return index.known_names(conn)

    def revision(self) -> int:
        """A number that grows with every change from any process; poll it to notice CLI changes."""
        with self._conn() as conn:
            return index.revision(conn)

    # ------------------------------------------------------------------ writes

    def install(self, source: Path | str, *, author: str, reason: str = "", activate: bool = True) -> Skill:
        """Publish a skill folder (or a git URL) as a new version; identical content reuses its version."""
        if isinstance(source, str) and is_git_url(source):
            with checkout(source) as folder:
                return self._install_folder(folder, author, reason or f"installed from {source}", activate)
        return self._install_folder(Path(source), author, reason, activate)

    def _install_folder(self, folder: Path, author: str, reason: str, activate: bool) -> Skill:
        problems = static_problems(folder)  # early, readable failure; the staged copy is checked again
        if problems:
            raise SkillError(problems, where=str(folder))
        files = list_files(folder)
        with self._write_lock:
            meta, digest = self._publish(files)
            with self._conn() as conn, index.transaction(conn):
                exists = conn.execute(
                    "SELECT 1 FROM versions WHERE name = ? AND content_hash = ?", (meta.name, digest)
                ).fetchone()
                action = "activate" if exists else "install"
                if not exists:
                    index.add_version(conn, meta, digest, author, reason)
                if activate:
                    index.set_active(conn, meta.name, digest)
                rev = index.log_event(conn, meta.name, action, digest, author, reason)
            skill = self._skill(meta.name, digest)
            if activate:
                self._notify(SkillChange(meta.name, action, skill.meta.card(), digest, rev))
        return skill

    def _publish(self, files: builtins.list[SkillFile]) -> tuple[SkillMeta, str]:
        """Stage, fsync and rename into versions/<name>/<hash>. Caller holds the write lock.

        Metadata and hash come from the staged copy, so what is recorded is what was published even
        if the source folder changes meanwhile.
        """
        stage = self._tmp / f"stage-{os.getpid()}-{uuid.uuid4().hex}"
        try:
            copy_files(files, stage)
            problems = static_problems(stage)
            if problems:
                raise SkillError(problems)
            meta, _ = read_skill_dir(stage)
            digest = content_hash(list_files(stage))
            target = self._versions / meta.name / digest
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                # Published before (an identical reinstall, or a crash between rename and commit):
                # keep it if intact; a damaged folder is moved aside (and swept) and replaced.
                if _intact(target, digest):
                    return meta, digest
                target.rename(self._tmp / f"damaged-{uuid.uuid4().hex}")
            os.rename(stage, target)
            fsync_dir(target.parent)
            return meta, digest
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def _resolve(self, conn: sqlite3.Connection, name: str, ref: str) -> str:
        matches = index.find_version(conn, name, ref)
        if not matches:
            raise SkillNotFound(f"{name!r} has no version {ref!r} (see `switchboard skills show {name}`)")
        if len({m[0] for m in matches}) > 1:
            raise SkillNotFound(f"{ref!r} matches several versions of {name!r}; give more of the hash")
        return matches[0][0]

    def activate(self, name: str, ref: str | None = None, *, author: str, reason: str = "") -> Skill:
        """Make a stored version live (default: the newest one)."""
        return self._switch(name, ref, author, reason, "activate")

    def rollback(self, name: str, ref: str | None = None, *, author: str, reason: str = "") -> Skill:
        """Make an older version live: `ref`, or by default the version installed before the active one.

        "Before" means install order, so repeated rollbacks walk back through history; to undo a
        rollback, `activate` the newer version explicitly.
        """
        return self._switch(name, ref, author, reason, "rollback")

    def _switch(self, name: str, ref: str | None, author: str, reason: str, action: str) -> Skill:
        with self._write_lock:
            with self._conn() as conn, index.transaction(conn):
                versions = index.history(conn, name)
                if not versions:
                    raise SkillNotFound(f"no skill named {name!r}")
                digest = self._pick(conn, name, ref, versions, action)
                index.set_active(conn, name, digest)
                rev = index.log_event(conn, name, action, digest, author, reason)
            skill = self._skill(name, digest)
            self._notify(SkillChange(name, action, skill.meta.card(), digest, rev))
        return skill

    def _pick(
        self, conn: sqlite3.Connection, name: str, ref: str | None, versions: builtins.list[VersionInfo], action: str
    ) -> str:
        if ref is not None:
            return self._resolve(conn, name, ref)
        if action == "activate":
            return versions[-1].content_hash
        current = next((i for i, v in enumerate(versions) if v.active), None)
        if current is None:
            raise SkillNotFound(f"{name!r} is not active; name the version to activate")
        if current == 0:
            raise SkillNotFound(f"{name!r} is at its oldest version {versions[0].version}; nothing to roll back to")
        return versions[current - 1].content_hash

    def remove(self, name: str, *, author: str, reason: str = "") -> None:
        """Deactivate `name`; its versions and history stay (activate brings it back)."""
        with self._write_lock:
            with self._conn() as conn, index.transaction(conn):
                if index.active_row(conn, name) is None:
                    raise SkillNotFound(f"no active skill named {name!r}")
                index.set_active(conn, name, None)
                rev = index.log_event(conn, name, "remove", None, author, reason)
            self._notify(SkillChange(name, "remove", None, None, rev))


def _owner_alive(stage_name: str) -> bool:
    """Whether the process that named a staging folder `stage-<pid>-…` still runs."""
    parts = stage_name.split("-")
    if len(parts) < 3 or parts[0] != "stage" or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _intact(folder: Path, digest: str) -> bool:
    try:
        return hash_folder(folder) == digest
    except (SkillError, OSError):
        return False
