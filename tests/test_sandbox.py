"""Sandboxed skill runs with real subprocesses, at every isolation level this host supports.

Limits are kept small (few processes, short timeouts, 1 MiB output) so the hostile scripts here are
safe on a 2-core CI machine: every run is killed as a group, with its cgroup/PID namespace if any.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import socket
import sys
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from agent_core.sandbox import (
    IsolationLevel,
    IsolationReport,
    SandboxPolicy,
    SandboxRunner,
    SkillEnvCache,
    detect_isolation,
    grant_secrets,
    workspace_name,
)

pytestmark = pytest.mark.slow

REPORT = detect_isolation()
LEVELS = [
    pytest.param(
        level,
        id=level.name.lower(),
        marks=pytest.mark.skipif(
            level > REPORT.level,
            reason=f"{level.name.lower()} isolation not available here: {'; '.join(REPORT.notes) or 'see describe()'}",
        ),
    )
    for level in IsolationLevel
]
FAST = SandboxPolicy(wall_timeout=10.0, cpu_seconds=5, memory_bytes=256 * 1024 * 1024, max_processes=8)


@pytest.fixture(params=LEVELS)
def report(request: pytest.FixtureRequest) -> IsolationReport:
    level: IsolationLevel = request.param
    return REPORT.at(level)


@pytest.fixture
def skill(tmp_path: Path) -> Path:
    skill_dir = tmp_path / "skill"
    (skill_dir / "scripts").mkdir(parents=True)
    return skill_dir


def script(skill_dir: Path, body: str, name: str = "x.py") -> list[str]:
    (skill_dir / "scripts" / name).write_text(textwrap.dedent(body))
    return [sys.executable, f"scripts/{name}"]


def runner(tmp_path: Path, report: IsolationReport, max_concurrent: int = 4) -> SandboxRunner:
    return SandboxRunner(tmp_path / "workspaces", FAST, isolation=report, max_concurrent=max_concurrent)


async def test_json_in_out_and_workspace_env(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    cmd = script(
        skill,
        """
        import json, os, sys
        data = json.load(sys.stdin)
        print(json.dumps({"sum": data["a"] + data["b"], "cwd": os.getcwd(), "home": os.environ["HOME"],
                          "tmp": os.environ["TMPDIR"], "env": sorted(os.environ)}))
        """,
    )
    sb = runner(tmp_path, report)
    res = await sb.run(user_key="feishu:alice", skill_dir=skill, command=cmd, stdin_json='{"a": 2, "b": 3}')
    assert res.ok, res
    out = json.loads(res.stdout)
    ws = sb.workspace("feishu:alice")
    assert out["sum"] == 5 and out["cwd"] == str(ws) and out["home"] == str(ws) and out["tmp"] == str(ws / "tmp")
    assert set(out["env"]) <= {"PATH", "LANG", "HOME", "TMPDIR", "PWD", "SKILL_DIR", "PYTHONDONTWRITEBYTECODE",
                               "PYTHONUNBUFFERED", "TZ", "LC_ALL"}  # fmt: skip
    assert ws.stat().st_mode & 0o777 == 0o700


async def test_gateway_secrets_invisible_granted_visible(
    tmp_path: Path, skill: Path, report: IsolationReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHBOARD_FAKE_APP_SECRET", "gateway-secret-123")
    monkeypatch.setenv("GITHUB_TOKEN", "gateway-github-token")
    cmd = script(
        skill,
        """
        import json, os
        print(json.dumps(dict(os.environ)))
        """,
    )
    granted = {"GITHUB_TOKEN": "granted-token", "OTHER": "not-declared"}
    policy = FAST.for_skill(("secrets:GITHUB_TOKEN", "secrets:UNGRANTED"), granted)
    res = await runner(tmp_path, report).run(user_key="u", skill_dir=skill, command=cmd, policy=policy)
    env = json.loads(res.stdout)
    assert "SWITCHBOARD_FAKE_APP_SECRET" not in env and "gateway-secret-123" not in res.stdout.decode()
    assert env["GITHUB_TOKEN"] == "granted-token"
    assert "OTHER" not in env and "UNGRANTED" not in env


def test_grant_secrets_needs_declaration_and_grant() -> None:
    assert grant_secrets(("secrets:A", "secrets:B", "network"), {"A": "1", "C": "3"}) == {"A": "1"}
    assert grant_secrets((), {"A": "1"}) == {}
    assert FAST.for_skill(("network",), {}).allow_network is True
    assert FAST.for_skill((), {}).allow_network is False


async def test_infinite_loop_is_killed_and_loop_stays_responsive(
    tmp_path: Path, skill: Path, report: IsolationReport
) -> None:
    cmd = script(skill, "while True:\n    pass\n")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    policy = replace(FAST, wall_timeout=1.0)
    res = await runner(tmp_path, report).run(user_key="u", skill_dir=skill, command=cmd, policy=policy)
    tick_task.cancel()
    assert res.killed_reason == "timeout"
    assert 0.9 < res.duration < 4
    assert ticks >= 10  # the gateway's loop kept running while the script spun


async def test_cpu_limit(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    cmd = script(skill, "while True:\n    pass\n")
    policy = replace(FAST, wall_timeout=10.0, cpu_seconds=1)
    res = await runner(tmp_path, report).run(user_key="u", skill_dir=skill, command=cmd, policy=policy)
    assert res.killed_reason == "cpu" and res.duration < 5, res


def _alive_with(token: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if token.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


async def test_fork_bomb_is_capped(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    if report.pids_cgroup is None and report.euid == 0:
        pytest.skip("running as root without a writable pids cgroup: Linux ignores RLIMIT_NPROC for root")
    token = uuid.uuid4().hex
    # Bounded "bomb": at most 200 attempts, children close the pipes and sleep; the run must stop it.
    cmd = script(
        skill,
        f"""
        import os, sys, time
        made = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                os.closerange(0, 3)
                time.sleep(30)
                os._exit(0)
            made += 1
        print(made, flush=True)
        # token {token}
        """,
    )
    cmd.append(token)
    policy = replace(FAST, max_processes=8, wall_timeout=5.0)
    res = await runner(tmp_path, report).run(user_key="u", skill_dir=skill, command=cmd, policy=policy)
    assert 0 < int(res.stdout) < 8, res  # the script itself is one of the 8
    await asyncio.sleep(0.2)
    assert _alive_with(token) == []  # every forked child was killed with the run


async def test_ten_gigabytes_of_output_is_cut_quickly(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    cmd = script(
        skill,
        """
        import sys
        chunk = b"x" * (1 << 20)
        for _ in range(10 * 1024):  # 10 GiB
            sys.stdout.buffer.write(chunk)
        """,
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    policy = replace(FAST, max_output_bytes=1 << 20)
    res = await runner(tmp_path, report).run(user_key="u", skill_dir=skill, command=cmd, policy=policy)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert res.killed_reason == "output_limit" and res.stdout_truncated
    assert len(res.stdout) + len(res.stderr) <= 1 << 20
    assert res.duration < 5
    assert grown_kib < 64 * 1024  # the parent never buffered more than the cap (+ slack)


async def test_memory_hog_hits_memory_limit(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    cmd = script(skill, "blob = bytearray(2 * 1024 ** 3)\nprint(len(blob))\n")
    res = await runner(tmp_path, report).run(user_key="u", skill_dir=skill, command=cmd)
    assert res.killed_reason == "memory" and res.exit_code != 0, res


async def test_huge_file_hits_file_size_limit(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    cmd = script(
        skill,
        """
        with open("big.bin", "wb") as f:
            for _ in range(64):
                f.write(b"x" * (1 << 20))
        """,
    )
    sb = runner(tmp_path, report)
    policy = replace(FAST, max_file_bytes=1 << 20)
    res = await sb.run(user_key="u", skill_dir=skill, command=cmd, policy=policy)
    assert res.killed_reason == "file_size" and res.exit_code != 0, res
    assert (sb.workspace("u") / "big.bin").stat().st_size <= 1 << 20


@pytest.mark.parametrize("allowed", [False, True], ids=["denied", "allowed"])
async def test_network_permission(tmp_path: Path, skill: Path, report: IsolationReport, allowed: bool) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cmd = script(
        skill,
        f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            print("connected")
        except OSError as exc:
            print("blocked", exc)
        """,
    )
    policy = replace(FAST, allow_network=allowed)
    async with server:
        res = await runner(tmp_path, report).run(user_key="u", skill_dir=skill, command=cmd, policy=policy)
    if allowed or not report.network_blocked:
        assert res.stdout.startswith(b"connected"), res
    else:
        assert res.stdout.startswith(b"blocked"), res
    if not report.network_blocked:
        assert "network blocked without permission: NO" in report.describe()
        assert "rlimits cannot block network" in report.describe()


async def test_filesystem_outside_workspace(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    gateway_data = tmp_path / "gateway-data"
    gateway_data.mkdir()
    (gateway_data / "config.yaml").write_text("app_secret: s3cret\n")
    cmd = script(
        skill,
        f"""
        import json, os
        out = {{"cwd": os.getcwd(), "home": os.environ["HOME"]}}
        for name, action in [("read", lambda: open({str(gateway_data / "config.yaml")!r}).read()),
                             ("write", lambda: open({str(gateway_data / "evil")!r}, "w").write("x")),
                             ("skill", lambda: open(os.environ["SKILL_DIR"] + "/evil", "w").write("x"))]:
            try:
                action()
                out[name] = "ok"
            except OSError as exc:
                out[name] = type(exc).__name__
        print(json.dumps(out))
        """,
    )
    sb = runner(tmp_path, report)
    res = await sb.run(user_key="u", skill_dir=skill, command=cmd)
    out = json.loads(res.stdout)
    assert out["cwd"] == out["home"] == str(sb.workspace("u"))
    if not report.filesystem_confined:
        assert "filesystem confined to skill + workspace: NO" in report.describe()
        pytest.skip(f"{report.level.name.lower()} cannot confine the filesystem (needs bwrap); cwd/HOME checked")
    assert out["read"] != "ok" and out["write"] != "ok" and out["skill"] != "ok", out
    assert not (gateway_data / "evil").exists() and not (skill / "evil").exists()


async def test_fifty_concurrent_users_are_separated(tmp_path: Path, skill: Path, report: IsolationReport) -> None:
    cmd = script(
        skill,
        """
        import json, os, sys
        me = json.load(sys.stdin)["user"]
        with open("mine.txt", "w") as f:
            f.write(me)
        try:
            siblings = os.listdir(os.path.dirname(os.getcwd()))
        except OSError:
            siblings = []
        print(json.dumps({"me": me, "files": sorted(os.listdir(".")), "siblings": siblings}))
        """,
    )
    sb = runner(tmp_path, report, max_concurrent=4)
    users = [f"wecom:user-{i}" for i in range(50)]
    results = await asyncio.gather(
        *(sb.run(user_key=u, skill_dir=skill, command=cmd, stdin_json=json.dumps({"user": u})) for u in users)
    )
    workspaces = {sb.workspace(u) for u in users}
    assert len(workspaces) == 50
    for user, res in zip(users, results, strict=True):
        out = json.loads(res.stdout)
        assert out["me"] == user and out["files"] == ["mine.txt", "tmp"]
        assert (sb.workspace(user) / "mine.txt").read_text() == user
        if report.filesystem_confined:  # other users' workspaces are not even mounted
            assert set(out["siblings"]) <= {workspace_name(user)}


def test_workspace_names_are_path_safe(tmp_path: Path) -> None:
    sb = SandboxRunner(tmp_path / "ws", isolation=REPORT.at(IsolationLevel.RLIMITS))
    for key in ["../../etc", "/abs", "a/b", "nul\0byte", "Alice", "alice", "中文用户"]:
        path = sb.workspace(key)
        assert path.parent == tmp_path / "ws" and path.name.isalnum()
    assert sb.workspace("Alice") != sb.workspace("alice")
    with pytest.raises(ValueError, match="empty"):
        sb.workspace("")


def test_describe_and_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sb = SandboxRunner(tmp_path / "ws", isolation=REPORT.at(IsolationLevel.RLIMITS))
    assert sum("RLIMITS-ONLY" in r.getMessage() for r in caplog.records) == 1
    text = sb.describe()
    assert "sandbox isolation: rlimits" in text and "WARNING" in text
    best = REPORT.describe()
    assert f"sandbox isolation: {REPORT.level.name.lower()}" in best
    if REPORT.level < IsolationLevel.BWRAP:
        with pytest.raises(ValueError, match="not available"):
            REPORT.at(IsolationLevel(REPORT.level + 1))


async def test_ensure_env_is_cached_per_version(tmp_path: Path, skill: Path) -> None:
    cache = SkillEnvCache(tmp_path / "envs")
    t0 = time.monotonic()
    py1, py1_again = await asyncio.gather(
        cache.ensure_env("greet", "hash-v1", []), cache.ensure_env("greet", "hash-v1", [])
    )
    assert py1 == py1_again and py1.exists()
    marker = py1.parent.parent / ".ready"
    stamp = marker.stat().st_mtime_ns
    assert await cache.ensure_env("greet", "hash-v1", []) == py1
    assert marker.stat().st_mtime_ns == stamp  # not rebuilt
    py2 = await cache.ensure_env("greet", "hash-v2", [])
    assert py2 != py1 and py2.exists()
    assert await cache.ensure_env("../../evil name", "h", []) != py1
    assert all(p.parent == tmp_path / "envs" for p in (tmp_path / "envs").iterdir())
    assert [p.name for p in (tmp_path / "envs").iterdir() if p.name.startswith(".build")] == []
    assert time.monotonic() - t0 < 30
    # The cached env's interpreter runs skill scripts in the sandbox.
    cmd = script(skill, "import sys\nprint(sys.prefix)\n")
    sb = SandboxRunner(tmp_path / "ws", FAST, isolation=REPORT)
    res = await sb.run(user_key="u", skill_dir=skill, command=[str(py1), *cmd[1:]])
    assert res.ok and res.stdout.decode().strip() == str(py1.parent.parent), res


@pytest.mark.skipif(os.environ.get("SWITCHBOARD_TEST_PIP") != "1", reason="set SWITCHBOARD_TEST_PIP=1 (needs PyPI)")
async def test_ensure_env_installs_requirements(tmp_path: Path) -> None:
    py = await SkillEnvCache(tmp_path / "envs").ensure_env("six-user", "h1", ["six==1.16.0"])
    proc = await asyncio.create_subprocess_exec(str(py), "-c", "import six", env={})
    assert await proc.wait() == 0


def test_loopback_helper_sanity() -> None:
    """The network test's server is on loopback only (never any other address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert s.getsockname()[0] == "127.0.0.1"
