"""`switchboard skills …` run as the real executable against a temporary config and data dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

SWITCHBOARD = Path(sys.executable).parent / "switchboard"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "switchboard.yaml"
    path.write_text(yaml.safe_dump({"storage": {"data_dir": str(tmp_path / "data")}}), encoding="utf-8")
    return path


def skills(config: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    proc = subprocess.run(
        [str(SWITCHBOARD), "skills", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def write_skill(folder: Path, body: str, version: str = "1.0.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "SKILL.md").write_text(
        f"---\nname: greet\ndescription: Greets the user by name.\nversion: '{version}'\n---\n{body}\n",
        encoding="utf-8",
    )
    return folder


def test_list_shows_the_seed_library(config: Path) -> None:
    code, out, err = skills(config, "list")
    assert code == 0, err
    for name in ("fetch-url-summary", "http-health-check", "host-readonly-shell", "skill-authoring-guide"):
        assert name in out
    assert "@admin" in out  # audience is visible at a glance


def test_install_show_rollback_remove(config: Path, tmp_path: Path) -> None:
    src = write_skill(tmp_path / "greet", "Say hi.")
    code, out, err = skills(config, "install", str(src), "--reason", "first cut")
    assert code == 0 and "installed greet 1.0.0" in out, err
    write_skill(src, "Say hi warmly.", version="1.1.0")
    assert skills(config, "install", str(src), "--reason", "warmer", "--author", "bob")[0] == 0

    code, out, _ = skills(config, "show", "greet")
    assert code == 0 and "Say hi warmly." in out and "* 1.1.0" in out and "bob  warmer" in out
    code, out, _ = skills(config, "show", "greet", "1.0.0")
    assert code == 0 and "Say hi." in out

    code, out, _ = skills(config, "rollback", "greet")
    assert code == 0 and "active version is now 1.0.0" in out
    code, out, _ = skills(config, "activate", "greet", "1.1.0")
    assert code == 0 and "1.1.0" in out

    code, out, _ = skills(config, "remove", "greet", "--reason", "not needed")
    assert code == 0 and "history kept" in out
    assert "greet" not in skills(config, "list")[1]
    code, _, err = skills(config, "show", "greet")
    assert code == 1 and "no active skill named 'greet'" in err


def test_invalid_skill_lists_every_problem(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "SKILL.md").write_text("---\nname: Bad Name\npermissions: [root]\n---\nbody\n", encoding="utf-8")
    code, _, err = skills(config, "install", str(bad))
    assert code == 1
    assert "the skill is not valid" in err and "name:" in err and "description: required" in err
    assert "'root' is not a known permission" in err
    code, _, err = skills(config, "install", str(tmp_path / "nowhere"))
    assert code == 1 and "not a folder" in err


def test_verify_by_name_and_by_path(config: Path, tmp_path: Path) -> None:
    code, out, err = skills(config, "verify", "host-readonly-shell")
    assert code == 0 and "verify: OK" in out, out + err
    src = write_skill(tmp_path / "greet", "Run scripts/hi.py.")
    (src / "scripts").mkdir()
    (src / "scripts" / "hi.py").write_text("print('hello')\n")
    (src / "tests").mkdir()
    (src / "tests" / "cases.yaml").write_text("- expect: {equals: goodbye}\n")
    code, out, _ = skills(config, "verify", str(src))
    assert code == 1 and "FAIL: tests/cases.yaml :: case 1: stdout is 'hello'" in out
    code, out, _ = skills(config, "install", str(src), "--verify")
    assert code == 1 and "greet" not in skills(config, "list")[1]
    (src / "tests" / "cases.yaml").write_text("- expect: {equals: hello}\n")
    code, out, _ = skills(config, "install", str(src), "--verify")
    assert code == 0 and "verify: OK" in out and "installed greet" in out


def test_unknown_subcommand_usage(config: Path) -> None:
    code, out, _ = skills(config)
    assert code == 0 and "rollback" in out


def test_audit_lists_skill_runs_from_the_database(config: Path, tmp_path: Path) -> None:
    import asyncio

    from gateway.config import load_settings
    from gateway.store.migrations import MIGRATIONS
    from gateway.store.sqlite_db import SqliteDatabase
    from gateway.store.sqlite_traces import SqliteTraceStore

    code, out, _ = skills(config, "audit")
    assert code == 0 and ("no database yet" in out or "no skill runs" in out)

    async def record() -> None:
        db = SqliteDatabase(load_settings(config).database_path)
        await db.open(MIGRATIONS)
        run = {"skill": "http-health-check", "version": "abc123", "args": '{"endpoints": []}', "exit_code": 1}
        await SqliteTraceStore(db).record_run(
            at=1.7e9,
            session_key="k",
            user_id="chatapp:b:alice",
            run={**run, "ok": False, "duration": 0.5, "error": "boom"},
        )
        await db.close()

    asyncio.run(record())
    code, out, _ = skills(config, "audit", "--skill", "http-health-check")
    assert code == 0 and "chatapp:b:alice  http-health-check@abc123" in out and "FAILED (boom)" in out
