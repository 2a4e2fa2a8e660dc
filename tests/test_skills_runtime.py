"""The runtime's glue around skills: scripts in the sandbox, per-skill environments, verify's runner."""

from __future__ import annotations

from pathlib import Path

from agent_core.sandbox.envs import SkillEnvCache
from agent_core.sandbox.runner import SandboxRunner
from agent_core.skills.model import Skill, SkillMeta
from gateway.skills_runtime import SandboxScripts

SCRIPT = "import json,os,sys; a=json.load(sys.stdin); print(json.dumps({'got': a, 'cwd': os.getcwd()}))"


def skill(root: Path, requirements: tuple[str, ...] = ()) -> Skill:
    folder = root / "echo-skill"
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "main.py").write_text(SCRIPT, encoding="utf-8")
    meta = SkillMeta(name="echo-skill", description="echo", requirements=requirements)
    return Skill(meta=meta, instructions="", path=folder, content_hash="e" * 64)


async def test_a_script_runs_in_the_users_sandbox_workspace(tmp_path: Path) -> None:
    runner = SandboxRunner(tmp_path / "ws")
    scripts = SandboxScripts(runner, SkillEnvCache(tmp_path / "envs"))
    out = await scripts(
        user_key="chatapp:b:alice",
        skill=skill(tmp_path),
        script="main.py",
        args_json='{"x": 1}',
        secrets={},
        network=False,
    )
    assert out.exit_code == 0 and out.killed_reason is None
    assert '"got": {"x": 1}' in out.stdout and str(runner.workspace("chatapp:b:alice").name) in out.stdout


async def test_a_skill_whose_requirements_cannot_be_installed_reports_it_instead_of_running(tmp_path: Path) -> None:
    scripts = SandboxScripts(SandboxRunner(tmp_path / "ws"), SkillEnvCache(tmp_path / "envs", pip_timeout=120))
    broken = skill(tmp_path, requirements=("switchboard-no-such-package-4f1c==1.0",))
    out = await scripts(user_key="u", skill=broken, script="main.py", args_json="{}", secrets={}, network=False)
    assert out.exit_code is None and out.killed_reason == "environment"
    assert "could not prepare the skill's Python environment" in out.stderr


async def test_scripts_are_refused_below_the_required_isolation(tmp_path: Path) -> None:
    from agent_core.sandbox.isolation import IsolationLevel
    from gateway.skills_runtime import _isolation_refusal

    runner = SandboxRunner(tmp_path / "ws")
    weakest = SandboxRunner(tmp_path / "ws2", isolation=runner.isolation.at(IsolationLevel.RLIMITS))
    assert _isolation_refusal(weakest, "rlimits") == ""
    reason = _isolation_refusal(weakest, "bwrap")
    assert "disabled" in reason and "rlimits" in reason
    scripts = SandboxScripts(weakest, refuse=reason)
    out = await scripts(
        user_key="u", skill=skill(tmp_path), script="main.py", args_json="{}", secrets={}, network=False
    )
    assert out.exit_code is None and out.killed_reason == "isolation" and "config requires bwrap" in out.stderr


def test_the_router_index_follows_removals_from_the_library(tmp_path: Path) -> None:
    from agent_core.router import SkillRouter
    from agent_core.skills.library import SkillLibrary
    from agent_core.skills.seeds import ensure_seeds
    from gateway.skills_runtime import sync_router

    library = SkillLibrary(tmp_path / "skills")
    ensure_seeds(library)
    with SkillRouter(tmp_path / "router.sqlite3", embedder=None) as router:
        sync_router(library, router)
        assert "http-health-check" in router.names()
        library.remove("http-health-check", author="test", reason="retired")
        sync_router(library, router)
        assert "http-health-check" not in router.names()
        assert all(hit.name != "http-health-check" for hit in router.route("is the health endpoint up?", 4))
