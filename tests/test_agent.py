"""The tool-using turn against the fake LLM (through litellm) with real skill folders and real scripts."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from agent_core.agent.ports import RouteHit, ScriptOutcome, SkillRun, TurnContext
from agent_core.agent.react import AgentLimits, SkillAgent
from agent_core.llm import LiteLLMClient, LLMProfile
from agent_core.skills.model import Skill, SkillMeta
from tests.fakes.fake_llm import FakeLLM, ToolCallReply

ENV = {"TEST_LLM_KEY": "sk-test"}


def make_skill(
    root: Path, name: str, *, script: str = "", audience: tuple[str, ...] = (), perms: tuple[str, ...] = ()
) -> Skill:
    folder = root / name
    (folder / "scripts").mkdir(parents=True)
    if script:
        (folder / "scripts" / "main.py").write_text(script, encoding="utf-8")
    meta = SkillMeta(name=name, description=f"{name} does things", audience=audience, permissions=perms)
    return Skill(meta=meta, instructions=f"Run main.py for {name}.", path=folder, content_hash="h" * 64)


class Library:
    def __init__(self, *skills: Skill) -> None:
        self.skills = {s.meta.name: s for s in skills}

    def get(self, name: str) -> Skill | None:
        return self.skills.get(name)


class Finder:
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def route(self, query: str, k: int = 5) -> list[RouteHit]:
        return [RouteHit(n, 1.0, "test") for n in self.names[:k]]


class Runner:
    """Runs the skill's script for real (plain subprocess; the sandbox has its own tests)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    async def __call__(
        self, *, user_key: str, skill: Skill, script: str, args_json: str, secrets: Mapping[str, str], network: bool
    ) -> ScriptOutcome:
        self.calls.append({"skill": skill.meta.name, "args": json.loads(args_json), "secrets": dict(secrets)})
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(skill.path / "scripts" / script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", **secrets},
        )
        try:
            out, err = await proc.communicate(args_json.encode())
        except asyncio.CancelledError:  # as the sandbox does: a cut-off run leaves no process behind
            proc.kill()
            await asyncio.shield(proc.wait())
            raise
        return ScriptOutcome(proc.returncode, out.decode(), err.decode(), 0.01)


@pytest.fixture
def llm(fake_llm: FakeLLM) -> LiteLLMClient:
    profile = LLMProfile(model="openai/fake", api_base=fake_llm.base_url, api_key_env="TEST_LLM_KEY", retries=0)
    return LiteLLMClient({"main": profile}, "main", ENV)


DISK = "import json,sys; a=json.load(sys.stdin); print(json.dumps({'path': a['path'], 'used': '42%'}))"


async def test_the_model_opens_and_runs_a_skill_and_answers_from_its_output(
    tmp_path: Path, fake_llm: FakeLLM, llm: LiteLLMClient
) -> None:
    skill = make_skill(tmp_path, "disk-report", script=DISK)
    fake_llm.enqueue(
        ToolCallReply("open_skill", {"name": "disk-report"}, call_id="c1"),
        ToolCallReply("run_skill", {"name": "disk-report", "script": "main.py", "args": {"path": "/"}}, call_id="c2"),
        "The disk is 42% full.",
    )
    runner = Runner()
    progress: list[str] = []

    async def note(line: str) -> None:
        progress.append(line)

    agent = SkillAgent(llm, Library(skill), Finder(["disk-report"]), runner)
    answer, trace = await agent.answer([], ["how full is the disk?"], TurnContext(user_key="u1", on_progress=note))
    assert answer.text == "The disk is 42% full." and not answer.failed
    assert [r.name for r in trace.offered] == ["disk-report"] and trace.opened == ["disk-report"]
    [run] = trace.runs
    assert run.ok and run.skill == "disk-report" and '"used": "42%"' in run.output_excerpt
    assert runner.calls[0]["args"] == {"path": "/"}
    system = fake_llm.chat_requests()[0].body["messages"][0]["content"]
    assert "disk-report: disk-report does things" in system
    third = fake_llm.chat_requests()[2].body["messages"]
    assert third[-1]["role"] == "tool" and "42%" in third[-1]["content"]
    assert "running skill disk-report" in progress and progress[-1] == "done"
    assert trace.steps == 3 and trace.prompt_tokens > 0


async def test_a_non_admin_cannot_run_an_admin_skill_even_when_the_model_insists(
    tmp_path: Path, fake_llm: FakeLLM, llm: LiteLLMClient
) -> None:
    shell = make_skill(tmp_path, "host-shell", script=DISK, audience=("admin",), perms=("shell",))
    ask = ToolCallReply("run_skill", {"name": "host-shell", "script": "main.py", "args": {"path": "/"}})
    fake_llm.enqueue(ask, ask, "I can't do that for you.")
    runner = Runner()
    agent = SkillAgent(llm, Library(shell), Finder(["host-shell"]), runner)
    answer, trace = await agent.answer([], ["run df"], TurnContext(user_key="u1", roles=frozenset({"member"})))
    assert runner.calls == [] and answer.text == "I can't do that for you."
    assert all("only for: admin" in e for e in trace.errors) and len(trace.errors) == 2
    fake_llm.enqueue(ask, "done")
    await SkillAgent(llm, Library(shell), None, runner).answer(
        [], ["run df"], TurnContext(user_key="root", roles=frozenset({"admin"}))
    )
    assert len(runner.calls) == 1  # the same request from an admin runs


async def test_privileged_permissions_need_a_privileged_role_and_secrets_are_only_the_granted_ones(
    tmp_path: Path, fake_llm: FakeLLM, llm: LiteLLMClient
) -> None:
    script = "import json,os,sys; print(json.dumps(sorted(k for k in os.environ if k.startswith('TOK'))))"
    skill = make_skill(tmp_path, "gh", script=script, perms=("secrets:TOKEN_A", "network"))
    call = ToolCallReply("run_skill", {"name": "gh", "script": "main.py"})
    fake_llm.enqueue(call, "denied", call, "done")
    runner = Runner()
    agent = SkillAgent(llm, Library(skill), None, runner)
    granted = {"TOKEN_A": "a", "TOKEN_B": "b"}
    _, denied = await agent.answer([], ["x"], TurnContext(user_key="u", granted_secrets=granted))
    assert runner.calls == [] and "secrets:TOKEN_A" in denied.errors[0]
    _, ok = await agent.answer(
        [], ["x"], TurnContext(user_key="u", roles=frozenset({"admin"}), granted_secrets=granted)
    )
    assert runner.calls[0]["secrets"] == {"TOKEN_A": "a"} and ok.runs[0].output_excerpt.strip() == '["TOKEN_A"]'
    # with per-skill grants (what the runtime always passes) an unlisted skill gets nothing it declared
    fake_llm.enqueue(call, "done")
    grants = {"other": frozenset({"TOKEN_A"})}
    ungranted = TurnContext(user_key="u", roles=frozenset({"admin"}), granted_secrets=granted, secret_grants=grants)
    await agent.answer([], ["x"], ungranted)
    assert runner.calls[1]["secrets"] == {}


async def test_bounds_stop_the_loop_and_say_why(tmp_path: Path, fake_llm: FakeLLM, llm: LiteLLMClient) -> None:
    skill = make_skill(tmp_path, "loop", script=DISK)
    for _ in range(5):
        fake_llm.enqueue(ToolCallReply("open_skill", {"name": "loop"}, content="still working"))
    agent = SkillAgent(llm, Library(skill), None, Runner(), limits=AgentLimits(max_steps=3))
    answer, trace = await agent.answer([], ["go"], TurnContext(user_key="u"))
    assert trace.stopped_by == "steps" and trace.steps == 3
    assert "3 steps" in answer.text and "still working" in answer.text


async def test_a_skill_run_cut_off_by_the_time_limit_is_still_audited(
    tmp_path: Path, fake_llm: FakeLLM, llm: LiteLLMClient
) -> None:
    slow = make_skill(tmp_path, "slow-change", script="import time; time.sleep(8)")
    fake_llm.enqueue(ToolCallReply("run_skill", {"name": "slow-change", "script": "main.py", "args": {}}))
    audited: list[SkillRun] = []

    async def on_run(run: SkillRun) -> None:
        audited.append(run)

    agent = SkillAgent(llm, Library(slow), None, Runner(), limits=AgentLimits(wall_seconds=4))
    _, trace = await agent.answer([], ["change it"], TurnContext(user_key="u", on_run=on_run))
    assert trace.stopped_by == "time"
    [run] = audited  # the script may have changed things before it was stopped: it is on record
    assert run.skill == "slow-change" and not run.ok and "cancelled" in run.error


async def test_workspace_files_stay_inside_and_bad_calls_go_back_to_the_model(
    tmp_path: Path, fake_llm: FakeLLM, llm: LiteLLMClient
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    fake_llm.enqueue(
        ToolCallReply("write_file", {"path": "../escape.txt", "content": "x"}, call_id="a"),
        ToolCallReply("write_file", {"path": "notes/a.txt", "content": "hello"}, call_id="b"),
        ToolCallReply("read_file", {"path": "notes/a.txt"}, call_id="c"),
        ToolCallReply("nonexistent_tool", {}, call_id="d"),
        ToolCallReply("remember", {"note": "prefers Chinese"}, call_id="e"),
        "ok",
    )
    agent = SkillAgent(llm, Library(), None, Runner())
    answer, trace = await agent.answer([], ["files"], TurnContext(user_key="u", workspace=ws))
    assert answer.text == "ok"
    assert not (tmp_path / "escape.txt").exists() and (ws / "notes" / "a.txt").read_text() == "hello"
    requests = fake_llm.chat_requests()
    assert "inside your workspace" in requests[1].body["messages"][-1]["content"]
    assert requests[3].body["messages"][-1]["content"] == "hello"
    assert "unknown tool" in requests[4].body["messages"][-1]["content"]
    assert trace.memory_notes == ["prefers Chinese"]


def test_workspace_files_refuse_symlinks_anywhere_on_the_path(tmp_path: Path) -> None:
    from agent_core.agent.workspace_files import WorkspacePathError, read_text, write_bytes

    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("gateway secret")
    (ws / "link").symlink_to(outside)  # what a sandboxed script could plant
    (ws / "file-link").symlink_to(outside / "secret.txt")
    for path in ("link/secret.txt", "file-link", "../outside/secret.txt", "/etc/hostname"):
        with pytest.raises(WorkspacePathError):
            read_text(ws, path, 100)
    for path in ("link/new.txt", "file-link"):
        with pytest.raises(WorkspacePathError):
            write_bytes(ws, path, b"x")
    assert (outside / "secret.txt").read_text() == "gateway secret" and not (outside / "new.txt").exists()
    assert write_bytes(ws, "a/b/c.txt", b"ok") == "a/b/c.txt"
    assert read_text(ws, "./a/b/c.txt", 100) == ("ok", False)
