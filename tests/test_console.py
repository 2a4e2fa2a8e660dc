"""Console adapter round trip through the real runtime (journal, bus, turn via litellm, outbox)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from adapters.console import ConsoleAdapter, ConsoleConfig
from gateway.app import Runtime
from tests.conftest import ENV, make_settings
from tests.fakes.fake_llm import FakeLLM


async def test_console_round_trip(tmp_path: Path, fake_llm: FakeLLM) -> None:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    out = io.StringIO()
    console = ConsoleAdapter(ConsoleConfig(), user_id="tester", read_line=lines.get, out=out, interactive=False)
    settings = make_settings(tmp_path, fake_llm.base_url, "http://127.0.0.1:9/unused", server={"enabled": False})
    runtime = Runtime(settings, ENV, adapters={"console": console})
    await runtime.start()
    try:
        for text in ("hello", "   ", "second line"):
            await lines.put(text + "\n")
        await lines.put(None)
        await asyncio.wait_for(console.input_closed.wait(), 5)
        for _ in range(1500):  # up to 30 s: the first turn waits for the litellm import
            if len(console.sent) == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        await runtime.stop()
    assert [m.text for m in console.sent] == ["echo: hello", "echo: second line"]
    printed = out.getvalue()
    assert printed.index("echo: hello") < printed.index("echo: second line")
    assert len(fake_llm.chat_requests()) == 2, "blank lines are not messages"


async def test_quit_command_ends_input(tmp_path: Path, fake_llm: FakeLLM) -> None:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    console = ConsoleAdapter(ConsoleConfig(), user_id="t", read_line=lines.get, out=io.StringIO(), interactive=True)
    settings = make_settings(tmp_path, fake_llm.base_url, "http://127.0.0.1:9/unused", server={"enabled": False})
    runtime = Runtime(settings, ENV, adapters={"console": console})
    await runtime.start()
    try:
        await lines.put("/quit\n")
        await asyncio.wait_for(console.input_closed.wait(), 5)
    finally:
        await runtime.stop()
    assert console.sent == []
