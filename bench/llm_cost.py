"""CPU cost of one LLM call through our client, measured against a raw HTTP baseline in the same run.

Every figure is process CPU time per call against a local instant fake (tests/fakes/fake_llm.py, run
in a child process so its CPU is not counted). It shows what each turn costs the gateway besides
waiting for the model: litellm streaming vs a plain completion vs a bare aiohttp request.

    .venv/bin/python bench/llm_cost.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")

import aiohttp  # noqa: E402

from agent_core.llm import ChatMessage, LiteLLMClient, LLMProfile  # noqa: E402

MESSAGES = [ChatMessage(role="user", content="Summarise the disk usage report for host db-7, please.")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_up(base: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"{base}/models") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("fake LLM did not start")


async def cpu_per_call(calls: int, one: Callable[[], Awaitable[None]]) -> float:
    for _ in range(10):  # warm-up
        await one()
    start = time.process_time()
    for _ in range(calls):
        await one()
    return (time.process_time() - start) / calls * 1000


async def measure(base: str, calls: int) -> dict[str, float]:
    client = LiteLLMClient({"d": LLMProfile(model="openai/fake-model", api_base=base, retries=0)}, "d", {})
    await client.warm_up()
    payload = {"model": "fake-model", "messages": [m.model_dump() for m in MESSAGES]}

    async def litellm_complete() -> None:
        await client.complete(MESSAGES)

    async def litellm_stream() -> None:
        async for _ in client.stream(MESSAGES):
            pass

    async with aiohttp.ClientSession() as session:

        async def raw_request() -> None:
            async with session.post(f"{base}/chat/completions", json=payload) as resp:
                json.loads(await resp.read())

        return {
            "raw aiohttp request (baseline)": await cpu_per_call(calls, raw_request),
            "litellm plain completion": await cpu_per_call(calls, litellm_complete),
            "litellm streamed completion": await cpu_per_call(calls, litellm_stream),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    port = free_port()
    fake = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.fake_llm", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        asyncio.run(wait_up(base))
        figures = asyncio.run(measure(base, args.calls))
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    baseline = figures["raw aiohttp request (baseline)"]
    print(f"CPU per LLM call in the gateway process ({args.calls} calls each, instant local fake)")
    for name, ms in figures.items():
        print(f"  {name:<34} {ms:7.2f} ms   x{ms / baseline:5.1f} of baseline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
