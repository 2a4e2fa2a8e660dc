"""The whole Read -> Execute path through the real runtime: webhook in, routed seed skill run in the
sandbox against a local HTTP server, answer out, trace and audit row stored."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.conftest import RuntimeFactory
from tests.fakes.fake_llm import ErrorReply, FakeLLM, ToolCallReply
from tests.fakes.webhook_peer import CallbackReceiver, make_payload
from tests.test_e2e import post


async def _serve_health() -> tuple[web.AppRunner, str]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="fine")

    app = web.Application()
    app.router.add_get("/health", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/health"


async def test_a_question_is_routed_to_a_seed_skill_run_in_the_sandbox_and_answered(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    health, url = await _serve_health()
    try:
        fake_llm.enqueue(
            ToolCallReply("open_skill", {"name": "http-health-check"}, call_id="c1"),
            ToolCallReply(
                "run_skill", {"name": "http-health-check", "script": "check.py", "args": {"endpoints": [url]}}, "c2"
            ),
            "Your endpoint is up.",
        )
        async with runtime_factory() as rt:
            finder = rt.responder.target._agent._finder  # type: ignore[attr-defined]
            for _ in range(600):  # the router index is built in the background at start
                if finder.router is not None:
                    break
                await asyncio.sleep(0.05)
            assert finder.router is not None, "skill router never became ready"
            await post(rt, make_payload("h1", "c1", "ops-alice", "is our health endpoint up? 检查服务状态"))
            [delivery] = await receiver.async_wait_visible(1, seconds=30)
            runs = await rt.traces.skill_runs()
            router = rt.responder.target._agent._finder.router  # type: ignore[attr-defined]
            learned = router.stats().examples
    finally:
        await health.cleanup()
    assert delivery.body["text"] == "Your endpoint is up."
    first = fake_llm.chat_requests()[0].body
    assert "http-health-check" in first["messages"][0]["content"]  # routed and offered
    tool_result = fake_llm.chat_requests()[2].body["messages"][-1]["content"]
    result = json.loads(tool_result)
    assert result["all_ok"] is True and result["results"][0]["status"] == 200
    [run] = runs
    assert run["skill"] == "http-health-check" and run["ok"] == 1 and run["user_id"] == "webhook:ops:ops-alice"
    assert learned == 1  # the successful run taught the router this kind of request


async def test_a_skill_run_is_audited_even_when_the_turn_fails_after_it(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    health, url = await _serve_health()
    try:
        fake_llm.enqueue(
            ToolCallReply(
                "run_skill", {"name": "http-health-check", "script": "check.py", "args": {"endpoints": [url]}}, "c1"
            ),
            *[ErrorReply(400)] * 3,
        )
        async with runtime_factory() as rt:
            finder = rt.responder.target._agent._finder  # type: ignore[attr-defined]
            for _ in range(600):
                if finder.router is not None:
                    break
                await asyncio.sleep(0.05)
            await post(rt, make_payload("h2", "c1", "ops-bob", "is our health endpoint up?"))
            [delivery] = await receiver.async_wait_visible(1, seconds=30)
            runs = await rt.traces.skill_runs()
    finally:
        await health.cleanup()
    assert delivery.body["text"] == "The AI service could not process this request."
    [run] = runs  # the action happened, so it is on record although the answer failed
    assert run["skill"] == "http-health-check" and run["ok"] == 1 and run["user_id"] == "webhook:ops:ops-bob"
