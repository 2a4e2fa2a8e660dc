"""Logging: redaction, JSON lines, correlation ids, idempotent setup."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.logs import (
    NOISY_LOGGERS,
    JsonFormatter,
    RedactingFilter,
    correlation_id,
    setup_logging,
    with_correlation,
)

SECRET = "s3cr3t-app-value-42"
log = logging.getLogger("switchboard.test")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in NOISY_LOGGERS}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, (lvl, noisy_handlers) in noisy.items():
        logger = logging.getLogger(name)
        logger.setLevel(lvl)
        for h in list(logger.handlers):
            logger.removeHandler(h)
        for h in noisy_handlers:
            logger.addHandler(h)


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_secret_redacted_in_message_and_args() -> None:
    out = io.StringIO()
    setup_logging(secrets=[SECRET], stream=out)
    log.info("msg contains %s", SECRET)
    log.info("inline " + SECRET + " and arg %s", f"prefix-{SECRET}-suffix")
    log.warning("split across args %s%s", SECRET[:8], SECRET[8:])
    text = out.getvalue()
    assert SECRET not in text
    assert SECRET[:8] + SECRET[8:] not in text
    assert text.count("***") >= 4
    assert "prefix-***-suffix" in text


def test_short_secrets_ignored_and_add_later() -> None:
    out = io.StringIO()
    redactor = setup_logging(secrets=["abc", "12345"], stream=out)
    log.info("abc 12345 late-secret-xyz")
    redactor.add("late-secret-xyz")
    log.info("again late-secret-xyz")
    first, second = out.getvalue().splitlines()
    assert first.endswith("abc 12345 late-secret-xyz")
    assert second.endswith("again ***")


def test_json_lines_redacted_and_structured() -> None:
    out = io.StringIO()
    setup_logging(json_format=True, secrets=[SECRET], stream=out, level="debug")

    class Opaque:
        def __str__(self) -> str:
            return "opaque-object"

    log.debug("hello %s", SECRET, extra={"chat": "c1", "n": 3, "obj": Opaque(), "leak": SECRET})
    (rec,) = _json_lines(out)
    assert rec["level"] == "DEBUG"
    assert rec["logger"] == "switchboard.test"
    assert rec["msg"] == "hello ***"
    assert rec["correlation_id"] == "-"
    assert rec["chat"] == "c1"
    assert rec["n"] == 3
    assert rec["obj"] == "opaque-object"
    assert rec["leak"] == "***"
    assert rec["ts"].endswith("+00:00")
    assert "exc" not in rec
    assert SECRET not in out.getvalue()


@pytest.mark.parametrize("json_format", [False, True])
def test_exception_text_redacted(json_format: bool) -> None:
    out = io.StringIO()
    setup_logging(json_format=json_format, secrets=[SECRET], stream=out)
    try:
        raise ValueError(f"connect failed with key {SECRET}")
    except ValueError:
        log.exception("upstream error")
    text = out.getvalue()
    assert SECRET not in text
    assert "ValueError: connect failed with key ***" in text
    if json_format:
        (rec,) = _json_lines(out)
        assert rec["msg"] == "upstream error"
        assert "Traceback" in rec["exc"]
        assert "***" in rec["exc"]


@pytest.mark.parametrize(
    ("raw", "leaked", "kept"),
    [
        ("Authorization: Bearer eyJhbGciOi.J9-abc_def", "eyJhbGciOi", "Bearer ***"),
        ("using key sk-abcDEF123_xyz-789 now", "sk-abcDEF123", "using key *** now"),
        ("GET /cb?token=tok987654&x=1", "tok987654", "token=***&x=1"),
        ("login password=hunter2 user=bob", "hunter2", "user=bob"),
        ("cfg api_key=AKIA999 secret=xyz777", "AKIA999", "secret=***"),
        ("feishu app_secret=fs-abcdef", "fs-abcdef", "app_secret=***"),
        ('body {"access_token": "at-123456"}', "at-123456", '"access_token": "***"'),
    ],
)
def test_generic_patterns_redacted(raw: str, leaked: str, kept: str) -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    log.info("%s", raw)
    text = out.getvalue()
    assert leaked not in text
    assert kept in text


def test_patterns_do_not_eat_ordinary_text() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    log.info("max_tokens=100 tokens used: 42 sk-short")
    assert out.getvalue().rstrip().endswith("max_tokens=100 tokens used: 42 sk-short")


def test_text_format_has_correlation_id() -> None:
    out = io.StringIO()
    setup_logging(stream=out)
    with with_correlation("req-7"):
        log.info("inside")
    log.info("outside")
    inside, outside = out.getvalue().splitlines()
    assert " INFO switchboard.test [req-7] inside" in inside
    assert " INFO switchboard.test [-] outside" in outside


def test_with_correlation_resets_even_on_error() -> None:
    def fail_inside() -> None:
        with with_correlation("outer"):
            with with_correlation("inner"):
                assert correlation_id.get() == "inner"
            assert correlation_id.get() == "outer"
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_inside()
    assert correlation_id.get() == "-"


async def test_correlation_id_propagates_across_await_into_tasks() -> None:
    out = io.StringIO()
    setup_logging(json_format=True, stream=out)
    gate = asyncio.Event()

    async def worker(name: str) -> None:
        await gate.wait()
        log.info("work %s", name)
        await asyncio.sleep(0)
        log.info("done %s", name)

    with with_correlation("cid-a"):
        task_a = asyncio.create_task(worker("a"))
    with with_correlation("cid-b"):
        task_b = asyncio.create_task(worker("b"))
    log.info("parent")
    gate.set()
    await asyncio.gather(task_a, task_b)

    recs = _json_lines(out)
    by_msg = {r["msg"]: r["correlation_id"] for r in recs}
    assert by_msg == {
        "parent": "-",
        "work a": "cid-a",
        "done a": "cid-a",
        "work b": "cid-b",
        "done b": "cid-b",
    }


def test_setup_twice_does_not_duplicate_output() -> None:
    first = io.StringIO()
    second = io.StringIO()
    setup_logging(stream=first)
    setup_logging(stream=second)
    log.info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1
    assert len(logging.getLogger().handlers) == 1


def test_setup_sets_levels_and_quiets_noisy_libraries() -> None:
    out = io.StringIO()
    setup_logging(level="WARNING", stream=out)
    log.info("hidden")
    logging.getLogger("aiohttp.access").warning("shown access")
    setup_logging(level="DEBUG", stream=out)
    logging.getLogger("aiohttp.access").info("hidden access")
    logging.getLogger("httpx").info("hidden httpx")
    logging.getLogger("LiteLLM").info("hidden litellm")
    log.debug("shown debug")
    text = out.getvalue()
    assert "hidden" not in text
    assert "shown access" in text
    assert "shown debug" in text
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging(level="LOUD", stream=out)


def test_library_handlers_removed_so_nothing_bypasses_redaction() -> None:
    side = io.StringIO()
    litellm_logger = logging.getLogger("LiteLLM")
    litellm_logger.addHandler(logging.StreamHandler(side))  # like litellm does at import
    out = io.StringIO()
    setup_logging(secrets=[SECRET], stream=out)
    litellm_logger.warning("calling provider with %s", SECRET)
    assert side.getvalue() == ""
    assert out.getvalue().count("calling provider with ***") == 1


def test_filter_never_raises_and_fails_closed() -> None:
    redactor = RedactingFilter([SECRET])

    bad_args = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items " + SECRET, ("many",), None)
    assert redactor.filter(bad_args) is True
    assert SECRET not in bad_args.getMessage()
    assert "many" in bad_args.getMessage()

    class Exploding:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    weird = logging.LogRecord("x", logging.INFO, __file__, 1, Exploding(), (), None)
    assert redactor.filter(weird) is True
    assert isinstance(weird.getMessage(), str)

    # formatting after filtering must work too
    assert JsonFormatter().format(bad_args)
    assert JsonFormatter().format(weird)


def test_filter_fails_closed_when_redaction_itself_breaks() -> None:
    class BrokenRedactor(RedactingFilter):
        def redact(self, text: str) -> str:
            raise RuntimeError("regex engine on fire")

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(BrokenRedactor([SECRET]))
    logger = logging.getLogger("switchboard.test.broken")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(SECRET)
        except ValueError:
            logger.error("value %s", SECRET, exc_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = out.getvalue()
    assert SECRET not in text
    assert "suppressed" in text


def test_filter_applies_to_child_logger_records_via_handler() -> None:
    out = io.StringIO()
    setup_logging(secrets=[SECRET], stream=out)
    logging.getLogger("adapters.feishu.deep.child").error("token %s", SECRET)
    assert SECRET not in out.getvalue()
    assert "token ***" in out.getvalue()
