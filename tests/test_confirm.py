"""Destructive skills run only after the user (not the model) confirms in chat, once, before expiry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent_core.agent.confirm import Confirmations
from agent_core.agent.react import SkillAgent
from agent_core.llm import LiteLLMClient, LLMProfile
from agent_core.skills.model import Skill, SkillMeta
from gateway.messages import ChatKind, InboundMessage, SessionKey
from gateway.responders import UNKNOWN_CODE, SkillResponder
from tests.fakes.fake_llm import FakeLLM, ToolCallReply
from tests.test_agent import ENV, Library, Runner

SCRIPT = "import json,sys; a=json.load(sys.stdin); print(json.dumps({'restarted': a['service']}))"


def restart_skill(root: Path) -> Skill:
    folder = root / "restart-service"
    (folder / "scripts").mkdir(parents=True)
    (folder / "scripts" / "main.py").write_text(SCRIPT, encoding="utf-8")
    meta = SkillMeta(name="restart-service", description="Restart a service", extra={"confirm": True})
    return Skill(meta=meta, instructions="Restarts things.", path=folder, content_hash="c" * 64)


@pytest.fixture
def model(fake_llm: FakeLLM) -> LiteLLMClient:
    profile = LLMProfile(model="openai/fake", api_base=fake_llm.base_url, api_key_env="TEST_LLM_KEY", retries=0)
    return LiteLLMClient({"main": profile}, "main", ENV)


def message(user: str, text: str) -> InboundMessage:
    return InboundMessage(
        platform="chatapp",
        bot_id="b",
        platform_msg_id=text,
        chat_id=user,
        chat_kind=ChatKind.DIRECT,
        sender_id=user,
        text=text,
    )


def responder(
    model: LiteLLMClient, skill: Skill, runner: Runner, confirmations: Confirmations, tmp: Path
) -> SkillResponder:
    agent = SkillAgent(model, Library(skill), None, runner, confirmations=confirmations)
    return SkillResponder(
        agent,
        roles={},
        secrets={},
        workspace_of=lambda key: tmp,
        allow_network=False,
        confirmations=confirmations,
    )


async def ask(r: SkillResponder, user: str, text: str) -> str:
    key = SessionKey(platform="chatapp", bot_id="b", chat_id=user, user_id=user)
    answer, _ = await r.respond(key, message(user, text), [], [text], None, None)
    return answer.text


async def test_the_parked_action_runs_only_on_the_users_confirmation_exactly_once(
    tmp_path: Path,
    fake_llm: FakeLLM,
    model: LiteLLMClient,
) -> None:
    runner, confirmations = Runner(), Confirmations()
    r = responder(model, restart_skill(tmp_path), runner, confirmations, tmp_path)
    call = {"name": "restart-service", "script": "main.py", "args": {"service": "nginx"}}
    fake_llm.enqueue(ToolCallReply("run_skill", call), "Please confirm.")
    assert await ask(r, "alice", "restart nginx") == "Please confirm."
    assert runner.calls == []  # the model's call parked it; nothing ran
    parked = fake_llm.chat_requests()[1].body["messages"][-1]["content"]
    code = re.search(r"confirm ([0-9a-f]+)", parked).group(1)  # type: ignore[union-attr]

    await ask(r, "mallory", f"confirm {code}")  # another user's code: an ordinary message, nothing runs
    assert runner.calls == []
    wrong = "000000" if code != "000000" else "111111"
    assert await ask(r, "alice", f"confirm {wrong}") == UNKNOWN_CODE  # a pending user with a wrong code
    assert runner.calls == []

    fake_llm.enqueue("nginx was restarted.")
    assert await ask(r, "alice", f"confirm {code}") == "nginx was restarted."
    assert runner.calls == [{"skill": "restart-service", "args": {"service": "nginx"}, "secrets": {}}]
    shown = fake_llm.chat_requests()[-1].body["messages"]
    assert shown[-1]["role"] == "tool" and '"restarted": "nginx"' in shown[-1]["content"]

    await ask(r, "alice", f"confirm {code}")  # single use: a second confirmation runs nothing
    assert len(runner.calls) == 1


async def test_a_confirmation_expires(tmp_path: Path, fake_llm: FakeLLM, model: LiteLLMClient) -> None:
    now = [0.0]
    runner, confirmations = Runner(), Confirmations(ttl=300, clock=lambda: now[0])
    r = responder(model, restart_skill(tmp_path), runner, confirmations, tmp_path)
    fake_llm.enqueue(
        ToolCallReply("run_skill", {"name": "restart-service", "script": "main.py", "args": {"service": "db"}}), "ok?"
    )
    await ask(r, "bob", "restart db")
    parked = fake_llm.chat_requests()[1].body["messages"][-1]["content"]
    code = re.search(r"confirm ([0-9a-f]+)", parked).group(1)  # type: ignore[union-attr]
    now[0] = 301
    await ask(r, "bob", f"确认 {code}")  # expired: nothing pending any more, so nothing can run
    assert runner.calls == []


async def test_look_alike_replies_are_ordinary_messages_and_a_quoted_true_still_asks(
    tmp_path: Path, fake_llm: FakeLLM, model: LiteLLMClient
) -> None:
    runner, confirmations = Runner(), Confirmations()
    r = responder(model, restart_skill(tmp_path), runner, confirmations, tmp_path)
    fake_llm.enqueue("Sure, what should I do?")
    assert await ask(r, "carol", "confirm facade") == "Sure, what should I do?"  # nothing pending: a normal turn
    assert await ask(r, "carol", "yes please") == "echo: yes please"

    from agent_core.agent.tools import needs_confirmation

    quoted = restart_skill(tmp_path / "q")
    object.__setattr__(quoted.meta, "extra", {"confirm": "true"})
    assert needs_confirmation(quoted)
    object.__setattr__(quoted.meta, "extra", {"confirm": "no"})
    assert not needs_confirmation(quoted)


async def test_a_tool_that_breaks_costs_an_error_message_not_the_turn(
    tmp_path: Path, fake_llm: FakeLLM, model: LiteLLMClient
) -> None:
    from agent_core.agent.ports import TurnContext

    broken_workspace = tmp_path / "not-a-folder"
    broken_workspace.write_text("x")  # the tool hits an OSError nobody planned for
    fake_llm.enqueue(ToolCallReply("write_file", {"path": "a.txt", "content": "x"}), "handled")
    agent = SkillAgent(model, Library(), None, Runner())
    answer, trace = await agent.answer([], ["write"], TurnContext(user_key="u", workspace=broken_workspace))
    assert answer.text == "handled" and "internal" in trace.errors[0]
    assert "ERROR" in fake_llm.chat_requests()[1].body["messages"][-1]["content"]


async def test_a_skill_rewritten_after_parking_is_not_run_on_the_old_confirmation(
    tmp_path: Path, fake_llm: FakeLLM, model: LiteLLMClient
) -> None:
    runner, confirmations = Runner(), Confirmations()
    original = restart_skill(tmp_path)
    library = Library(original)
    agent = SkillAgent(model, library, None, runner, confirmations=confirmations)
    r = SkillResponder(
        agent, roles={}, secrets={}, workspace_of=lambda key: tmp_path, allow_network=False, confirmations=confirmations
    )
    call = {"name": "restart-service", "script": "main.py", "args": {"service": "api"}}
    fake_llm.enqueue(ToolCallReply("run_skill", call), "confirm?")
    await ask(r, "dave", "restart api")
    code = re.search(r"confirm ([0-9a-f]+)", fake_llm.chat_requests()[1].body["messages"][-1]["content"]).group(1)  # type: ignore[union-attr]
    library.skills["restart-service"] = Skill(
        meta=original.meta, instructions="new", path=original.path, content_hash="d" * 64
    )
    fake_llm.enqueue("It changed, so I did not run it.")
    await ask(r, "dave", f"confirm {code}")
    assert runner.calls == []
    assert "changed since it was confirmed" in fake_llm.chat_requests()[-1].body["messages"][-1]["content"]
