"""Shared fixtures: a fake LLM and a callback receiver on 127.0.0.1, and a runtime factory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from gateway.app import Runtime
from gateway.config import Settings
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.webhook_peer import CallbackReceiver

BOT_SECRET = b"test-bot-secret-0123456789"
ENV = {"TEST_BOT_SECRET": BOT_SECRET.decode(), "TEST_LLM_KEY": "sk-test-key-abcdef123456"}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[SqliteDatabase]:
    """A migrated database in the test's folder (modules with special needs define their own)."""
    database = SqliteDatabase(tmp_path / "main.sqlite3")
    await database.open(MIGRATIONS)
    yield database
    await database.close()


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as llm:
        yield llm


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver(BOT_SECRET) as peer:
        yield peer


def settings_data(tmp_path: Path, llm_url: str, callback_url: str, **overrides: Any) -> dict[str, Any]:
    """Config (as the YAML mapping) for tests: random port, fast retries, fake LLM, one webhook bot `ops`."""
    data: dict[str, Any] = {
        "server": {"port": 0, "drain_seconds": 5},
        "storage": {"data_dir": str(tmp_path / "data")},
        "outbox": {"base_backoff": 0.05, "max_backoff": 0.5, "send_timeout": 2},
        "llm": {
            # In-process litellm keeps each runtime start fast (the worker process imports litellm, ~3 s);
            # the worker path has its own tests (test_llm_process.py) and the crash test runs `serve` with it.
            "isolation": "inline",
            "profiles": {
                "default": {
                    "model": "openai/fake-model",
                    "api_base": llm_url,
                    "api_key_env": "TEST_LLM_KEY",
                    "retries": 0,
                    "timeout": 10,
                },
            },
        },
        "adapters": {
            "webhook": {
                "enabled": True,
                "bots": {"ops": {"secret_env": "TEST_BOT_SECRET", "callback_url": callback_url, "timeout": 2}},
            }
        },
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return data


def make_settings(tmp_path: Path, llm_url: str, callback_url: str, **overrides: Any) -> Settings:
    """Settings for an in-process runtime (see `settings_data`)."""
    return Settings(**settings_data(tmp_path, llm_url, callback_url, **overrides))


RuntimeFactory = Callable[..., Any]


@pytest.fixture
def runtime_factory(tmp_path: Path, fake_llm: FakeLLM, receiver: CallbackReceiver) -> RuntimeFactory:
    @asynccontextmanager
    async def factory(env: dict[str, str] | None = None, **overrides: Any) -> AsyncIterator[Runtime]:
        settings = make_settings(tmp_path, fake_llm.base_url, receiver.url, **overrides)
        runtime = Runtime(settings, env if env is not None else ENV)
        await runtime.start()
        try:
            yield runtime
        finally:
            await runtime.stop()

    return factory
