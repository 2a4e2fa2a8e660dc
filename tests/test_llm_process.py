"""ProcessLLMClient: litellm in a child process, over real pipes, against the fake OpenAI server."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent_core.llm import ChatMessage, LLMAuthError, LLMNotConfigured, LLMProfile, LLMUnavailable
from agent_core.llm_process import ProcessLLMClient
from tests.fakes.fake_llm import DelayReply, ErrorReply, FakeLLM

KEY = "sk-process-secret-123456"
MSGS = [ChatMessage(role="user", content="hello worker")]


@pytest.fixture
async def client(fake_llm: FakeLLM) -> AsyncIterator[ProcessLLMClient]:
    profile = LLMProfile(model="openai/fake-model", api_base=fake_llm.base_url, api_key_env="K", retries=0, timeout=5)
    env = {**os.environ, "K": KEY}
    c = ProcessLLMClient({"default": profile}, "default", env)
    await c.warm_up()
    yield c
    await c.close()


def worker_pid(c: ProcessLLMClient) -> int:
    proc = c._proc  # the test needs the child to kill it
    assert proc is not None
    return proc.pid


async def test_complete_stream_and_ping_go_through_the_worker(client: ProcessLLMClient, fake_llm: FakeLLM) -> None:
    assert await client.complete(MSGS) == "echo: hello worker"
    deltas = [d async for d in client.stream(MSGS)]
    assert len(deltas) > 1
    assert "".join(deltas) == "echo: hello worker"
    assert await client.ping() == "openai/fake-model"
    requests = fake_llm.chat_requests()
    assert len(requests) == 3
    assert requests[0].authorization == f"Bearer {KEY}"
    assert "worker process" in client.describe()
    assert KEY not in client.describe()


async def test_concurrent_calls_are_multiplexed(client: ProcessLLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.latency = 0.3
    texts = [f"m{i}" for i in range(20)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    answers = await asyncio.gather(*(client.complete([ChatMessage(role="user", content=t)]) for t in texts))
    assert answers == [f"echo: {t}" for t in texts]
    assert loop.time() - start < 3, "20 calls of 0.3 s run side by side in the worker"


async def test_errors_keep_their_type_and_hide_the_key(client: ProcessLLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(ErrorReply(status=401, body=f'{{"error": {{"message": "bad key {KEY}"}}}}'))
    with pytest.raises(LLMAuthError) as err:
        await client.complete(MSGS)
    assert KEY not in str(err.value)
    assert KEY not in err.value.user_message


async def test_dead_worker_fails_calls_in_flight_and_is_replaced(client: ProcessLLMClient, fake_llm: FakeLLM) -> None:
    fake_llm.enqueue(DelayReply(5.0, then="too late"))
    call = asyncio.ensure_future(client.complete(MSGS))
    await asyncio.to_thread(fake_llm.wait_for_requests, 1, 30)  # the slow request is in flight
    first = worker_pid(client)
    os.kill(first, signal.SIGKILL)
    with pytest.raises(LLMUnavailable) as err:
        await asyncio.wait_for(call, 10)
    assert "worker" in err.value.user_message
    assert await client.complete(MSGS) == "echo: hello worker"
    assert worker_pid(client) != first


async def test_not_configured_needs_no_worker(fake_llm: FakeLLM) -> None:
    profile = LLMProfile(model="openai/fake-model", api_base=fake_llm.base_url, api_key_env="MISSING_KEY_VAR")
    c = ProcessLLMClient({"default": profile}, "default", {})
    await c.warm_up()
    with pytest.raises(LLMNotConfigured) as err:
        await c.complete(MSGS)
    assert "MISSING_KEY_VAR" in err.value.user_message
    assert c._proc is None
    await c.close()


async def test_close_stops_the_worker(fake_llm: FakeLLM) -> None:
    profile = LLMProfile(model="openai/fake-model", api_base=fake_llm.base_url)
    c = ProcessLLMClient({"default": profile}, "default", dict(os.environ))
    await c.warm_up()
    proc = c._proc
    assert proc is not None
    await c.close()
    assert proc.returncode == 0


def _live_workers() -> list[int]:
    """Child processes of this test process running the LLM worker."""
    found = []
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            stat = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (proc_dir / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and b"agent_core.llm_worker" in cmdline:
            found.append(int(proc_dir.name))
    return found


async def test_cancelled_start_up_leaves_no_worker_behind(fake_llm: FakeLLM) -> None:
    profile = LLMProfile(model="openai/fake-model", api_base=fake_llm.base_url)
    c = ProcessLLMClient({"default": profile}, "default", dict(os.environ))
    before = set(_live_workers())
    warm = asyncio.ensure_future(c.warm_up())
    await asyncio.sleep(0.3)  # the child is importing litellm
    warm.cancel()
    with pytest.raises(asyncio.CancelledError):
        await warm
    await c.close()
    assert set(_live_workers()) - before == set()


async def test_worker_diagnostics_come_through_our_logging(
    client: ProcessLLMClient, caplog: pytest.LogCaptureFixture
) -> None:
    proc = client._proc  # write a broken request line straight into the worker's pipe
    assert proc is not None and proc.stdin is not None
    with caplog.at_level("WARNING", logger="agent_core.llm_process"):
        proc.stdin.write(b"not a request\n")
        await proc.stdin.drain()
        for _ in range(100):
            if any("not JSON" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
    assert any("llm worker" in r.getMessage() and "not JSON" in r.getMessage() for r in caplog.records)
    assert await client.complete(MSGS) == "echo: hello worker", "the worker survives a broken line"


async def test_tool_calls_go_through_the_worker(client: ProcessLLMClient, fake_llm: FakeLLM) -> None:
    from tests.fakes.fake_llm import ToolCallReply

    fake_llm.enqueue(ToolCallReply("open_skill", {"name": "x"}, call_id="c1"))
    tools = [{"type": "function", "function": {"name": "open_skill", "parameters": {"type": "object"}}}]
    turn = await client.complete_tools([ChatMessage(role="user", content="hi")], tools)
    assert [(c.id, c.name) for c in turn.tool_calls] == [("c1", "open_skill")]
    assert fake_llm.chat_requests()[-1].body["tools"] == tools


async def test_a_call_given_up_by_the_turn_is_aborted_in_the_worker(
    client: ProcessLLMClient, fake_llm: FakeLLM
) -> None:
    assert await client.complete(MSGS) == "echo: hello worker"  # litellm's first call is slow to set up
    fake_llm.enqueue(DelayReply(1.5))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):  # e.g. the agent's wall-time bound
            await client.complete(MSGS)
    assert fake_llm.total_requests == 2  # the call did reach the model
    for _ in range(100):  # the fake notices the hang-up when its delay ends
        if fake_llm.abandoned_requests:
            break
        await asyncio.sleep(0.05)
    assert fake_llm.abandoned_requests == 1
    assert await client.complete(MSGS) == "echo: hello worker"  # the worker is fine afterwards
