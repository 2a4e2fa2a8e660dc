"""`switchboard skills …`: inspect and change the shared skill library under `<data_dir>/skills`.

Only argparse is imported at module level (`switchboard --help` must stay instant); the library,
SQLite and the config loader are imported when a skills command actually runs.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent_core.skills.library import SkillLibrary
    from agent_core.skills.model import Skill


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register the `skills` command group on the top-level subparsers."""
    skills = sub.add_parser("skills", parents=[common], help="list, install, verify and roll back skills")
    cmds = skills.add_subparsers(dest="skills_command", metavar="SUBCOMMAND")
    cmds.add_parser("list", parents=[common], help="active skills")
    show = cmds.add_parser("show", parents=[common], help="a skill's metadata, versions and instructions")
    show.add_argument("name")
    show.add_argument("version", nargs="?", help="version label or hash prefix (default: the active one)")
    install = cmds.add_parser("install", parents=[common], help="install a skill folder or git URL as a new version")
    install.add_argument("source", help="folder with SKILL.md, or git URL (append #sub/folder to pick one)")
    install.add_argument("--reason", default="", help="why (kept in the history)")
    install.add_argument("--author", default="", help="who (default: cli:<login name>)")
    install.add_argument("--verify", action="store_true", help="run the skill's tests first; install only if they pass")
    verify = cmds.add_parser("verify", parents=[common], help="static checks and the skill's own tests")
    verify.add_argument("target", help="an installed skill's name, or a path to a skill folder (contains '/')")
    for name, text in (("rollback", "activate the previous (or given) version"), ("activate", "activate a version")):
        cmd = cmds.add_parser(name, parents=[common], help=text)
        cmd.add_argument("name")
        cmd.add_argument("version", nargs="?", help="version label or hash prefix")
        cmd.add_argument("--reason", default="")
    remove = cmds.add_parser("remove", parents=[common], help="deactivate a skill (its history is kept)")
    remove.add_argument("name")
    remove.add_argument("--reason", default="")
    audit = cmds.add_parser("audit", parents=[common], help="the newest skill runs: who, what, outcome")
    audit.add_argument("--limit", type=int, default=30)
    audit.add_argument("--skill", default="", help="only runs of this skill")


def _author(args: argparse.Namespace) -> str:
    return str(getattr(args, "author", "") or f"cli:{getpass.getuser()}")


def _open(config: str | None) -> SkillLibrary:
    from agent_core.skills.library import SkillLibrary
    from agent_core.skills.seeds import ensure_seeds
    from gateway.config import config_path, env_snapshot, load_settings

    settings = load_settings(config_path(config, env_snapshot()))
    library = SkillLibrary(settings.storage.data_dir / "skills")
    ensure_seeds(library)
    return library


def _print_list(library: SkillLibrary) -> int:
    metas = library.list()
    if not metas:
        print("no skills installed")
        return 0
    width = max(len(m.name) for m in metas)
    for meta in metas:
        flags = " ".join([*meta.permissions, *(f"@{r}" for r in meta.audience)])
        summary = " ".join(meta.description.split())
        summary = summary if len(summary) <= 80 else summary[:79] + "…"
        print(f"{meta.name:<{width}}  {meta.version:<10} {summary}" + (f"  [{flags}]" if flags else ""))
    return 0


def _print_skill(library: SkillLibrary, skill: Skill) -> int:
    meta = skill.meta
    print(f"name:         {meta.name}")
    print(f"version:      {meta.version}  ({skill.content_hash[:12]})")
    print(f"description:  {' '.join(meta.description.split())}")
    for label, values in (
        ("tags", meta.tags),
        ("permissions", meta.permissions),
        ("audience", meta.audience),
        ("requirements", meta.requirements),
    ):
        if values:
            print(f"{label + ':':<14}{', '.join(values)}")
    print(f"path:         {skill.path}")
    print("history:")
    for v in library.history(meta.name):
        mark = "*" if v.active else " "
        print(f"  {mark} {v.version:<16} {v.content_hash[:12]}  {v.author}  {v.reason}")
    print()
    print(skill.instructions)
    return 0


def _verify(library_or_none: SkillLibrary | None, target: str) -> int:
    from pathlib import Path

    from agent_core.skills.verify import verify_skill
    from gateway.skills_runtime import SandboxTestRunner

    path = Path(target) if "/" in target or library_or_none is None else library_or_none.get(target).path
    report = verify_skill(path, SandboxTestRunner(_sandbox()))
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _sandbox() -> Any:
    """A sandbox for running skill tests, with workspaces in a throwaway folder."""
    import tempfile
    from pathlib import Path

    from agent_core.sandbox.runner import SandboxRunner

    return SandboxRunner(Path(tempfile.mkdtemp(prefix="switchboard-verify-")))


def _install(library: SkillLibrary, args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent_core.skills.sources import checkout, is_git_url

    if args.verify:
        if is_git_url(args.source):
            with checkout(args.source) as folder:
                if _verify(None, str(folder)) != 0:
                    return 1
                return _install_now(library, folder, args)
        if _verify(None, str(Path(args.source).resolve())) != 0:
            return 1
    return _install_now(library, args.source, args)


def _install_now(library: SkillLibrary, source: Any, args: argparse.Namespace) -> int:
    skill = library.install(source, author=_author(args), reason=args.reason)
    print(f"installed {skill.meta.name} {skill.meta.version} ({skill.content_hash[:12]}), now active")
    return 0


def _dispatch(library: SkillLibrary, args: argparse.Namespace) -> int:
    cmd = args.skills_command
    if cmd == "list":
        return _print_list(library)
    if cmd == "show":
        skill = library.version(args.name, args.version) if args.version else library.get(args.name)
        return _print_skill(library, skill)
    if cmd == "install":
        return _install(library, args)
    if cmd == "verify":
        return _verify(library, args.target)
    if cmd in ("rollback", "activate"):
        switch = library.rollback if cmd == "rollback" else library.activate
        skill = switch(args.name, args.version, author=_author(args), reason=args.reason)
        print(f"{args.name}: active version is now {skill.meta.version} ({skill.content_hash[:12]})")
        return 0
    if cmd == "audit":
        return _audit(args)
    if cmd == "remove":
        library.remove(args.name, author=_author(args), reason=args.reason)
        print(f"{args.name}: removed (history kept; `switchboard skills activate {args.name}` restores it)")
        return 0
    raise AssertionError(cmd)


def _audit(args: argparse.Namespace) -> int:
    """Read the audit table straight from the database (read-only; works while the service runs)."""
    import datetime
    import sqlite3

    from gateway.config import config_path, env_snapshot, load_settings

    settings = load_settings(config_path(args.config, env_snapshot()))
    path = settings.database_path
    if not path.exists():
        print("no database yet: no skill has run")
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        where, params = ("WHERE skill = ?", [args.skill]) if args.skill else ("", [])
        rows = conn.execute(
            "SELECT at, user_id, skill, version, ok, exit_code, duration, error, args FROM skill_runs"
            f" {where} ORDER BY id DESC LIMIT ?",
            [*params, max(1, args.limit)],
        ).fetchall()
    except sqlite3.OperationalError as exc:
        print(f"no audit log in {path}: {exc}")
        return 0
    finally:
        conn.close()
    if not rows:
        print("no skill runs recorded")
    for at, user, skill, version, ok, code, duration, error, run_args in rows:
        when = datetime.datetime.fromtimestamp(at).isoformat(timespec="seconds")
        outcome = "ok" if ok else f"FAILED ({error or f'exit {code}'})"
        print(f"{when}  {user}  {skill}@{version}  {duration:.2f}s  {outcome}  args={run_args[:120]}")
    return 0


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run one `skills` subcommand; skill problems are printed one per line and exit with 1."""
    if args.skills_command is None:
        parser.parse_args(["skills", "--help"])
    from agent_core.skills.library import SkillNotFound
    from agent_core.skills.parse import SkillError

    try:
        return _dispatch(_open(args.config), args)
    except SkillError as exc:
        many = ["the skill is not valid:", *(f"  - {p}" for p in exc.problems)]
        lines = [str(exc)] if len(exc.problems) == 1 else many
        print("switchboard skills: " + "\n".join(lines), file=sys.stderr)
        return 1
    except SkillNotFound as exc:
        print(f"switchboard skills: {exc}", file=sys.stderr)
        return 1
