"""Regression tests for review findings: each names the failure it prevents."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Runtime, build_adapters
from gateway.config import load_settings
from gateway.errors import ConfigError, StorageError
from gateway.run import _secrets
from tests.conftest import BOT_SECRET, ENV, RuntimeFactory, make_settings
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.webhook_peer import CallbackReceiver, make_payload, send_signed


async def test_retry_after_zero_does_not_become_a_resend_storm(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver
) -> None:
    receiver.fail_next(3, 429, headers={"Retry-After": "0"})
    async with runtime_factory() as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.port}/webhooks/webhook/ops"
        await send_signed(session, url, BOT_SECRET, make_payload("ra0", "c1", "u", "hi"))
        await receiver.async_wait_visible(1, seconds=15)
        await asyncio.sleep(0.3)
    assert [a.status for a in receiver.attempts] == [429, 429, 429, 200]


def test_adapter_disabled_through_env_string_is_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_ADAPTERS__WEBHOOK__ENABLED", "false")
    settings = load_settings(None)
    assert settings.adapters["webhook"]["enabled"] == "false"  # raw sections keep env strings ...
    assert build_adapters(settings, {}) == {}  # ... but "false" means off


def test_unknown_adapter_is_a_config_error() -> None:
    settings = load_settings(None)
    settings.adapters["telepathy"] = {"enabled": True}
    with pytest.raises(ConfigError, match=r"adapters\.telepathy"):
        build_adapters(settings, {})


async def test_unusable_data_dir_is_a_clean_error_and_stop_is_safe(tmp_path: Path, fake_llm: FakeLLM) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    settings = make_settings(tmp_path, fake_llm.base_url, "http://127.0.0.1:9/cb", storage={"data_dir": str(blocker)})
    runtime = Runtime(settings, ENV)
    with pytest.raises(StorageError, match="cannot open the database"):
        await runtime.start()
    await runtime.stop()  # after a failed start: nothing to do, no error
    await runtime.stop()


async def test_readiness_probe_really_writes(runtime_factory: RuntimeFactory) -> None:
    async with runtime_factory() as rt:
        checks = await rt.readiness()
        stamp = await rt.db.read(lambda c: c.execute("SELECT checked_at FROM health").fetchone()[0])
    assert checks["database"] is True
    assert stamp > 0


def test_secrets_from_files_are_redacted_as_used(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-a-file-123456\n")
    secret_file = tmp_path / "hook"
    secret_file.write_text("hook-secret-abcdef\n")
    settings = load_settings(None)
    settings.llm.profiles["default"].api_key_file = key_file
    settings.adapters["webhook"] = {"enabled": True, "bots": {"b": {"secret_file": str(secret_file)}}}
    found = _secrets(settings, {"OPENAI_API_KEY": "sk-env-value-999999\n"})
    assert {"sk-from-a-file-123456", "hook-secret-abcdef", "sk-env-value-999999"} <= set(found)


async def test_llm_worker_answers_malformed_requests_instead_of_hanging(fake_llm: FakeLLM) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_core.llm_worker",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=dict(os.environ),
    )
    assert proc.stdin is not None and proc.stdout is not None
    config = {"profiles": {"d": {"model": "openai/fake-model", "api_base": fake_llm.base_url}}, "default": "d"}
    proc.stdin.write(json.dumps(config).encode() + b"\n")
    assert json.loads(await asyncio.wait_for(proc.stdout.readline(), 60)) == {"ready": True}
    proc.stdin.write(b"this is not json\n")
    proc.stdin.write(json.dumps({"id": 1, "op": "complete", "messages": [{"role": "wizard"}]}).encode() + b"\n")
    proc.stdin.write(json.dumps({"id": 2, "op": "explode", "messages": []}).encode() + b"\n")
    msg = {"id": 3, "op": "complete", "messages": [{"role": "user", "content": "still alive?"}]}
    proc.stdin.write(json.dumps(msg).encode() + b"\n")
    answers = {}
    for _ in range(3):
        line = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        answers[line["id"]] = line
    assert answers[1]["error"]["kind"] == "LLMUnavailable"
    assert answers[2]["error"]["kind"] == "LLMUnavailable"
    assert answers[3]["text"] == "echo: still alive?"
    proc.stdin.close()
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_journal_failure_is_a_503_not_an_ack(runtime_factory: RuntimeFactory, receiver: CallbackReceiver) -> None:
    async with runtime_factory() as rt, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{rt.port}/webhooks/webhook/ops"
        await rt.db.write(lambda conn: conn.execute("ALTER TABLE inbound RENAME TO inbound_gone"))
        status, body = await send_signed(session, url, BOT_SECRET, make_payload("j1", "c1", "u", "hi"))
        assert status == 503
        assert "unable" in body["error"]
        async with session.get(f"http://127.0.0.1:{rt.port}/healthz") as resp:
            assert resp.status == 200
        await rt.db.write(lambda conn: conn.execute("ALTER TABLE inbound_gone RENAME TO inbound"))
        status, _ = await send_signed(session, url, BOT_SECRET, make_payload("j1", "c1", "u", "hi"))
        assert status == 200, "the platform's retry is accepted once storage works again"
        await receiver.async_wait_visible(1, seconds=15)
