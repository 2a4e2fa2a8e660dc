"""agent_core.llm through real litellm calls against the FakeLLM server (real sockets, 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_core.llm import (
    ChatMessage,
    LiteLLMClient,
    LLMAuthError,
    LLMBadRequest,
    LLMError,
    LLMNotConfigured,
    LLMProfile,
    LLMRateLimited,
    LLMUnavailable,
    _map_error,
    prepare_litellm_env,
)
from tests.fakes.fake_llm import DelayReply, ErrorReply, FakeLLM, ToolCallReply, TruncatedStreamReply

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-SECRET-0123456789abcdef"
ENV = {"TEST_LLM_KEY": KEY}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def fake2() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def profile(base_url: str, **overrides: Any) -> LLMProfile:
    fields: dict[str, Any] = {
        "model": "openai/test-model",
        "api_base": base_url,
        "api_key_env": "TEST_LLM_KEY",
        "timeout": 5.0,
        "retries": 0,
    }
    return LLMProfile(**(fields | overrides))


def client(base_url: str, env: dict[str, str] | None = None, **overrides: Any) -> LiteLLMClient:
    return LiteLLMClient({"main": profile(base_url, **overrides)}, "main", ENV if env is None else env)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


def assert_no_secret(err: LLMError) -> None:
    for text in (str(err), repr(err), err.user_message, err.detail, " ".join(map(str, err.args))):
        assert KEY not in text
    assert "\n" not in err.user_message
    assert "Traceback" not in err.user_message
    assert len(err.user_message) < 200


# ------------------------------------------------------------------ happy paths


async def test_complete_returns_text_and_sends_model_key_and_limits(fake: FakeLLM) -> None:
    fake.enqueue("Hello from the fake")
    llm = client(fake.base_url, max_tokens=77, temperature=0.25)
    assert await llm.complete(user("hi")) == "Hello from the fake"
    [req] = fake.requests
    assert req.path == "/v1/chat/completions"
    assert req.body["model"] == "test-model"  # provider prefix stripped by litellm
    assert req.authorization == f"Bearer {KEY}"
    assert req.body["max_tokens"] == 77
    assert req.body["temperature"] == 0.25
    assert not req.body.get("stream")


async def test_per_call_max_tokens_overrides_profile(fake: FakeLLM) -> None:
    llm = client(fake.base_url, max_tokens=500)
    assert await llm.complete(user("x"), max_tokens=12) == "echo: x"
    assert fake.requests[0].body["max_tokens"] == 12


async def test_history_is_passed_in_order(fake: FakeLLM) -> None:
    history = [
        ChatMessage(role="system", content="You are terse."),
        ChatMessage(role="user", content="first question"),
        ChatMessage(role="assistant", content="first answer"),
        ChatMessage(role="user", content="second question"),
    ]
    assert await client(fake.base_url).complete(history) == "echo: second question"
    sent = fake.requests[0].messages
    assert [(m["role"], m["content"]) for m in sent] == [(m.role, m.content) for m in history]


async def test_concurrent_calls_get_their_own_echo(fake: FakeLLM) -> None:
    fake.latency = 0.05
    llm = client(fake.base_url)
    replies = await asyncio.gather(*(llm.complete(user(f"msg {i}")) for i in range(20)))
    assert replies == [f"echo: msg {i}" for i in range(20)]
    assert len(fake.requests) == 20


async def test_stream_yields_several_deltas_that_join_to_the_text(fake: FakeLLM) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    fake.enqueue(text)
    deltas = [d async for d in client(fake.base_url).stream(user("go"))]
    assert len(deltas) >= 5
    assert all(deltas)
    assert "".join(deltas) == text
    assert fake.requests[0].body["stream"] is True


async def test_stream_echo_default(fake: FakeLLM) -> None:
    deltas = [d async for d in client(fake.base_url).stream(user("stream me"))]
    assert "".join(deltas) == "echo: stream me"


async def test_ping_is_a_one_token_call_and_returns_the_model(fake: FakeLLM) -> None:
    assert await client(fake.base_url).ping() == "openai/test-model"
    assert fake.requests[0].body["max_tokens"] == 1


async def test_warm_up_imports_litellm_off_loop(fake: FakeLLM) -> None:
    llm = client(fake.base_url)
    await llm.warm_up()
    assert "litellm" in sys.modules
    assert await llm.complete(user("warm")) == "echo: warm"


# ------------------------------------------------------------------ keys / configuration


async def test_missing_env_var_means_not_configured(fake: FakeLLM) -> None:
    llm = client(fake.base_url, env={})
    assert not llm.is_configured()
    with pytest.raises(LLMNotConfigured) as info:
        await llm.complete(user("hi"))
    assert "TEST_LLM_KEY" in info.value.user_message
    assert "switchboard doctor" in info.value.user_message
    with pytest.raises(LLMNotConfigured):
        [d async for d in llm.stream(user("hi"))]
    with pytest.raises(LLMNotConfigured):
        await llm.ping()
    assert "NOT CONFIGURED" in llm.describe()
    assert fake.requests == []


async def test_unknown_default_profile_means_not_configured(fake: FakeLLM) -> None:
    llm = LiteLLMClient({"main": profile(fake.base_url)}, "nope", ENV)
    assert not llm.is_configured()
    with pytest.raises(LLMNotConfigured, match="nope"):
        await llm.complete(user("hi"))
    assert "nope" in llm.describe()
    assert fake.requests == []


async def test_key_file_is_read_and_stripped(fake: FakeLLM, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n", encoding="utf-8")
    llm = client(fake.base_url, env={}, api_key_file=key_file)
    assert llm.is_configured()
    assert await llm.complete(user("hi")) == "echo: hi"
    assert fake.requests[0].authorization == f"Bearer {KEY}"
    assert str(key_file) in llm.describe()
    assert KEY not in llm.describe()


def test_missing_key_file_is_not_configured(tmp_path: Path) -> None:
    llm = client("http://127.0.0.1:1/v1", env={}, api_key_env=None, api_key_file=tmp_path / "absent")
    assert not llm.is_configured()
    assert "absent" in llm.describe()


async def test_keyless_local_profile_sends_placeholder_key(fake: FakeLLM) -> None:
    llm = client(fake.base_url, env={}, api_key_env=None)
    assert llm.is_configured()
    assert await llm.complete(user("hi")) == "echo: hi"
    assert fake.requests[0].authorization == "Bearer sk-none"
    assert "no key" in llm.describe()


def test_describe_names_env_var_but_never_the_key() -> None:
    llm = client(f"http://user:{KEY}@127.0.0.1:9/v1?api_key={KEY}")
    text = llm.describe()
    assert text.startswith("main: openai/test-model @ http://127.0.0.1:9/v1")
    assert "$TEST_LLM_KEY" in text
    assert KEY not in text


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="model"):
        LLMProfile(model="gpt-4o-mini")  # provider missing
    with pytest.raises(ValueError, match="retries"):
        LLMProfile(model="openai/x", retries=11)
    with pytest.raises(ValueError, match="api_key"):
        LLMProfile(model="openai/x", api_key="inline-secret")  # type: ignore[call-arg]


# ------------------------------------------------------------------ errors


async def test_500_is_retried_then_succeeds(fake: FakeLLM) -> None:
    fake.enqueue(ErrorReply(500), ErrorReply(502), "finally")
    assert await client(fake.base_url, retries=2).complete(user("hi")) == "finally"
    assert len(fake.requests) == 3


async def test_500_exhausting_retries_raises_unavailable(fake: FakeLLM) -> None:
    fake.enqueue(*[ErrorReply(500)] * 5)
    with pytest.raises(LLMUnavailable) as info:
        await client(fake.base_url, retries=1).complete(user("hi"))
    assert len(fake.requests) == 2  # 1 + retries
    assert info.value.transient
    assert "500" in info.value.detail
    assert_no_secret(info.value)


async def test_401_is_auth_error_without_the_key(fake: FakeLLM) -> None:
    fake.enqueue(ErrorReply(401, f"Incorrect API key provided: {KEY}"))
    with pytest.raises(LLMAuthError) as info:
        await client(fake.base_url, retries=2).complete(user("hi"))
    assert len(fake.requests) == 1  # not retried
    assert not info.value.transient
    assert "***" in info.value.detail  # the echoed key was redacted
    assert_no_secret(info.value)


async def test_401_while_streaming_is_auth_error(fake: FakeLLM) -> None:
    # litellm 1.106.2 reports this one as BadRequestError(status_code=401)
    fake.enqueue(ErrorReply(401, f"bad key {KEY}"))
    with pytest.raises(LLMAuthError) as info:
        [d async for d in client(fake.base_url).stream(user("hi"))]
    assert_no_secret(info.value)


async def test_429_is_rate_limited(fake: FakeLLM) -> None:
    fake.enqueue(ErrorReply(429, "slow down", headers={"retry-after": "0"}))
    with pytest.raises(LLMRateLimited) as info:
        await client(fake.base_url).complete(user("hi"))
    assert info.value.transient
    assert_no_secret(info.value)


async def test_context_window_exceeded_is_bad_request(fake: FakeLLM) -> None:
    error = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    fake.enqueue(ErrorReply(400, error))
    with pytest.raises(LLMBadRequest) as info:
        await client(fake.base_url, retries=2).complete(user("hi"))
    assert "too long" in info.value.user_message
    assert len(fake.requests) == 1


async def test_unknown_model_404_is_bad_request(fake: FakeLLM) -> None:
    fake.enqueue(ErrorReply(404, "The model `test-model` does not exist"))
    with pytest.raises(LLMBadRequest, match="does not exist"):
        await client(fake.base_url).complete(user("hi"))


async def test_timeout_is_unavailable_and_fast(fake: FakeLLM) -> None:
    fake.enqueue(DelayReply(5))
    started = time.monotonic()
    with pytest.raises(LLMUnavailable) as info:
        await client(fake.base_url, timeout=0.3).complete(user("hi"))
    assert time.monotonic() - started < 3
    assert "too long" in info.value.user_message


async def test_closed_port_is_unavailable() -> None:
    with pytest.raises(LLMUnavailable) as info:
        await client(closed_port_url()).complete(user("hi"))
    assert_no_secret(info.value)


async def test_stream_cut_midway_is_unavailable_and_does_not_fall_back(fake: FakeLLM, fake2: FakeLLM) -> None:
    fake.enqueue(TruncatedStreamReply("one two three four five six seven eight"))
    llm = LiteLLMClient(
        {"main": profile(fake.base_url, fallback="spare"), "spare": profile(fake2.base_url)}, "main", ENV
    )
    got: list[str] = []

    async def consume() -> None:
        async for delta in llm.stream(user("hi")):
            got.append(delta)

    with pytest.raises(LLMUnavailable):
        await consume()
    assert got  # some text arrived before the cut
    assert fake2.requests == []  # no fallback once text was shown


def test_map_error_without_litellm_exceptions() -> None:
    assert type(_map_error(TimeoutError())) is LLMUnavailable
    assert type(_map_error(ConnectionRefusedError())) is LLMUnavailable
    generic = _map_error(ValueError("boom"))
    assert type(generic) is LLMError
    assert "ValueError" in generic.detail
    original = LLMRateLimited()
    assert _map_error(original) is original


# ------------------------------------------------------------------ fallback


async def test_fallback_profile_used_when_primary_is_down(fake: FakeLLM) -> None:
    profiles = {
        "main": profile(closed_port_url(), fallback="local"),
        "local": profile(fake.base_url, model="openai/local-model", api_key_env=None),
    }
    llm = LiteLLMClient(profiles, "main", ENV)
    assert await llm.complete(user("are you there")) == "echo: are you there"
    assert fake.requests[0].body["model"] == "local-model"
    assert "".join([d async for d in llm.stream(user("streamed"))]) == "echo: streamed"
    assert "fallback local: openai/local-model" in llm.describe()


async def test_fallback_on_rate_limit(fake: FakeLLM, fake2: FakeLLM) -> None:
    fake.enqueue(ErrorReply(429, headers={"retry-after": "0"}))
    llm = LiteLLMClient({"main": profile(fake.base_url, fallback="b"), "b": profile(fake2.base_url)}, "main", ENV)
    assert await llm.complete(user("hi")) == "echo: hi"
    assert len(fake2.requests) == 1


async def test_no_fallback_for_non_transient_errors(fake: FakeLLM, fake2: FakeLLM) -> None:
    fake.enqueue(ErrorReply(401))
    llm = LiteLLMClient({"main": profile(fake.base_url, fallback="b"), "b": profile(fake2.base_url)}, "main", ENV)
    with pytest.raises(LLMAuthError):
        await llm.complete(user("hi"))
    assert fake2.requests == []


async def test_fallback_cycle_tries_each_profile_once(fake: FakeLLM, fake2: FakeLLM) -> None:
    fake.default = fake2.default = lambda body: ErrorReply(503)
    profiles = {"a": profile(fake.base_url, fallback="b"), "b": profile(fake2.base_url, fallback="a")}
    llm = LiteLLMClient(profiles, "a", ENV)
    with pytest.raises(LLMUnavailable) as info:
        await llm.complete(user("hi"))
    assert (len(fake.requests), len(fake2.requests)) == (1, 1)
    assert "fallback 'b'" in info.value.detail


async def test_unconfigured_fallback_is_skipped(fake: FakeLLM, fake2: FakeLLM) -> None:
    profiles = {
        "a": profile(closed_port_url(), fallback="b"),
        "b": profile(fake.base_url, api_key_env="MISSING_KEY", fallback="c"),
        "c": profile(fake2.base_url),
    }
    llm = LiteLLMClient(profiles, "a", ENV)
    assert llm.is_configured()
    assert await llm.complete(user("hi")) == "echo: hi"
    assert (len(fake.requests), len(fake2.requests)) == (0, 1)


# ------------------------------------------------------------------ import hygiene / env


def test_importing_llm_module_does_not_import_litellm() -> None:
    code = "import agent_core.llm, sys; assert 'litellm' not in sys.modules, 'litellm imported eagerly'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_prepare_litellm_env_sets_defaults_but_keeps_explicit_values() -> None:
    env = {"LITELLM_MODE": "DEV"}
    prepare_litellm_env(env)
    assert env["LITELLM_MODE"] == "DEV"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


# ------------------------------------------------------------------ the fake itself


async def test_fake_tool_call_and_usage(fake: FakeLLM) -> None:
    import litellm  # already imported by earlier tests in this process, or ~3 s here

    fake.enqueue(ToolCallReply("get_weather", {"city": "Beijing"}))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    resp = await litellm.acompletion(
        model="openai/m",
        api_base=fake.base_url,
        api_key="k",
        messages=[{"role": "user", "content": "weather?"}],
        tools=tools,
        _skip_mcp_handler=True,
    )
    call = resp.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Beijing"})
    assert resp.choices[0].finish_reason == "tool_calls"
    assert resp.usage.total_tokens > 0


def test_fake_embeddings_are_deterministic(fake: FakeLLM) -> None:
    def embed(texts: list[str]) -> list[list[float]]:
        body = json.dumps({"model": "e", "input": texts, "dimensions": 8}).encode()
        req = urllib.request.Request(
            f"{fake.base_url}/embeddings", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return [d["embedding"] for d in json.load(resp)["data"]]

    first, second = embed(["a", "b"]), embed(["a", "b"])
    assert first == second
    assert first[0] != first[1]
    assert len(first[0]) == 8


def test_fake_entry_point_serves_echo() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_llm", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split()[-1]
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "bench"}]}).encode()
        req = urllib.request.Request(
            f"{base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.load(resp)["choices"][0]["message"]["content"] == "echo: bench"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_skill",
            "description": "Run a skill script",
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        },
    }
]


async def test_tool_calls_round_trip_with_results_and_usage(fake: FakeLLM) -> None:
    from agent_core.llm import ToolCall
    from tests.fakes.fake_llm import ToolCallReply

    fake.enqueue(ToolCallReply("run_skill", {"name": "http-health-check"}, call_id="call_7"), "all green")
    llm = client(fake.base_url)
    asked = [ChatMessage(role="user", content="are we up?")]
    first = await llm.complete_tools(asked, TOOLS)
    assert first.tool_calls == (ToolCall(id="call_7", name="run_skill", arguments='{"name": "http-health-check"}'),)
    assert first.prompt_tokens > 0
    follow = [
        *asked,
        ChatMessage(role="assistant", content="", tool_calls=first.tool_calls),
        ChatMessage(role="tool", content='{"ok": true}', tool_call_id="call_7"),
    ]
    second = await llm.complete_tools(follow, TOOLS)
    assert second.text == "all green" and second.tool_calls == ()
    sent = fake.chat_requests()[1].body
    assert sent["tools"][0]["function"]["name"] == "run_skill"
    assert sent["messages"][1]["tool_calls"][0]["id"] == "call_7"
    assert sent["messages"][2] == {"role": "tool", "content": '{"ok": true}', "tool_call_id": "call_7"}


async def test_streamed_tool_turns_forward_text_and_assemble_tool_calls(fake: FakeLLM) -> None:
    from tests.fakes.fake_llm import ToolCallReply

    fake.enqueue(ToolCallReply("run_skill", {"name": "x"}, call_id="s1"), "a streamed final answer")
    llm = client(fake.base_url)
    seen: list[str] = []

    async def on_text(delta: str) -> None:
        seen.append(delta)

    asked = [ChatMessage(role="user", content="go")]
    first = await llm.complete_tools(asked, TOOLS, on_text=on_text)
    assert [(c.id, c.name, c.arguments) for c in first.tool_calls] == [("s1", "run_skill", '{"name": "x"}')]
    second = await llm.complete_tools(asked, TOOLS, on_text=on_text)
    assert second.text == "a streamed final answer" and len(seen) > 1 and "".join(seen) == second.text
    assert second.prompt_tokens > 0  # usage requested on the stream
    assert all(r.body.get("stream") is True for r in fake.chat_requests())


def test_streamed_tool_call_fragments_from_different_providers_are_assembled() -> None:
    from types import SimpleNamespace as NS

    from agent_core.llm_tools import merge_call

    def frag(index: object = None, id: object = None, name: object = None, args: object = None) -> NS:
        return NS(index=index, id=id, function=NS(name=name, arguments=args))

    usual: dict[int, dict[str, str]] = {}
    for f in (frag(0, "a", "read_file", '{"pa'), frag(0, None, None, 'th": "x"}'), frag(1, "b", "remember", "{}")):
        merge_call(usual, f)
    assert [(c["id"], c["name"], c["arguments"]) for c in usual.values()] == [
        ("a", "read_file", '{"path": "x"}'),
        ("b", "remember", "{}"),
    ]
    no_index: dict[int, dict[str, str]] = {}
    for f in (frag(None, "a", "read_file", '{"pa'), frag(None, None, None, 'th": "x"}')):
        merge_call(no_index, f)
    assert [c["arguments"] for c in no_index.values()] == ['{"path": "x"}']
    whole_calls_same_index: dict[int, dict[str, str]] = {}
    for f in (frag(0, "a", "read_file", {"path": "x"}), frag(0, "b", "open_skill", '{"name": "y"}')):
        merge_call(whole_calls_same_index, f)
    assert [(c["name"], c["arguments"]) for c in whole_calls_same_index.values()] == [
        ("read_file", '{"path": "x"}'),
        ("open_skill", '{"name": "y"}'),
    ]
