"""Where a skill to install comes from: a local folder or a git repository.

A git URL is cloned shallowly into a temporary folder with the system `git` (no Python git library,
no third-party mirror: Memento-Skills fetched GitHub through gh-proxy.com without integrity checks).
The clone is then installed exactly like a local folder, so it passes the same checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent_core.skills.parse import SKILL_FILE, SkillError

GIT_PREFIXES = ("https://", "http://", "ssh://", "git://", "file://", "git@")
CLONE_TIMEOUT = 120.0


def is_git_url(source: str) -> bool:
    """True for anything `git clone` should fetch rather than a local folder path."""
    return source.startswith(GIT_PREFIXES) or (source.endswith(".git") and not Path(source).is_dir())


def _split_fragment(url: str) -> tuple[str, str]:
    """`url#path/in/repo` selects one skill folder of a repository that holds several."""
    base, _, sub = url.partition("#")
    return base, sub.strip("/")


def find_skill_folder(repo: Path, subdir: str = "") -> Path:
    """The skill folder inside a checkout: `subdir`, else the root, else the only SKILL.md in the tree."""
    if subdir:
        folder = (repo / subdir).resolve()
        if repo.resolve() not in folder.parents and folder != repo.resolve():
            raise SkillError([f"#{subdir} leaves the repository"])
        if not (folder / SKILL_FILE).is_file():
            raise SkillError([f"#{subdir}: no {SKILL_FILE} there"])
        return folder
    if (repo / SKILL_FILE).is_file():
        return repo
    found = sorted(p.parent for p in repo.rglob(SKILL_FILE) if ".git" not in p.relative_to(repo).parts)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SkillError([f"the repository has no {SKILL_FILE}"])
    names = ", ".join(p.relative_to(repo).as_posix() for p in found[:10])
    raise SkillError([f"the repository holds several skills; pick one with <url>#<folder> (found: {names})"])


def _git_env() -> dict[str, str]:
    """Never prompt for credentials (a CLI or service must fail, not hang) and ignore user hooks/config."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "SSH_AUTH_SOCK", "http_proxy")}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1", GIT_ASKPASS="/bin/false")
    for key in ("https_proxy", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "no_proxy"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


@contextmanager
def checkout(url: str, timeout: float = CLONE_TIMEOUT) -> Iterator[Path]:
    """Clone `url` (optionally `#subfolder`) into a temp dir and yield the skill folder; removed afterwards."""
    git = shutil.which("git")
    if git is None:
        raise SkillError(["installing from a git URL needs the `git` program, which is not on PATH"], where=url)
    base, subdir = _split_fragment(url)
    with tempfile.TemporaryDirectory(prefix="skill-clone-") as tmp:
        dest = Path(tmp) / "repo"
        cmd = [git, "clone", "--depth", "1", "--quiet", "--no-recurse-submodules", "--", base, str(dest)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_git_env(), check=False)
        except subprocess.TimeoutExpired:
            raise SkillError([f"git clone did not finish within {timeout:.0f}s"], where=base) from None
        if result.returncode != 0:
            detail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.returncode}"]
            raise SkillError([f"git clone failed: {detail[0]}"], where=base)
        yield find_skill_folder(dest, subdir)
