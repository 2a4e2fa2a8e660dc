"""ChatAgent over litellm against the fake server: plain and streamed answers, honest failures."""

from __future__ import annotations

from agent_core.chat import ChatAgent
from agent_core.llm import ChatMessage, LiteLLMClient, LLMProfile
from tests.fakes.fake_llm import ErrorReply, FakeLLM


def agent_for(llm: FakeLLM) -> ChatAgent:
    profile = LLMProfile(model="openai/fake-model", api_base=llm.base_url, retries=0, timeout=5)
    return ChatAgent(LiteLLMClient({"default": profile}, "default", {}), system_prompt="be brief")


async def test_plain_answer_sends_system_history_and_new_messages(fake_llm: FakeLLM) -> None:
    history = [ChatMessage(role="user", content="q0"), ChatMessage(role="assistant", content="a0")]
    answer = await agent_for(fake_llm).answer(history, ["one", "two"])
    assert answer.text == "echo: one\n\ntwo"
    assert not answer.failed
    [request] = fake_llm.chat_requests()
    assert request.body.get("stream") in (None, False)
    assert [(m["role"], m["content"]) for m in request.messages] == [
        ("system", "be brief"),
        ("user", "q0"),
        ("assistant", "a0"),
        ("user", "one\n\ntwo"),
    ]


async def test_streamed_answer_forwards_every_delta(fake_llm: FakeLLM) -> None:
    deltas: list[str] = []

    async def on_delta(text: str) -> None:
        deltas.append(text)

    answer = await agent_for(fake_llm).answer([], ["a fairly long question to stream"], on_delta)
    assert len(deltas) > 3
    assert "".join(deltas) == answer.text == "echo: a fairly long question to stream"
    assert fake_llm.chat_requests()[0].body["stream"] is True


async def test_failure_is_reported_not_raised(fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(ErrorReply(status=400, body='{"error": {"message": "context too long"}}'))
    answer = await agent_for(fake_llm).answer([], ["x"])
    assert answer.failed
    assert answer.error_kind
    assert "Traceback" not in answer.text
