"""Logging setup: correlation ids, secret redaction, JSON or text lines.

The redacting filter sits on the root *handler* (logger filters miss records propagated from child
loggers), and noisy libraries' own handlers are removed, so every emitted record passes through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

correlation_id: ContextVar[str] = ContextVar("correlation_id", default="-")

MIN_SECRET_LEN = 6
REDACTED = "***"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"
NOISY_LOGGERS: tuple[str, ...] = (
    *("aiohttp.access", "httpx", "httpcore", "openai"),
    *("litellm", "LiteLLM", "LiteLLM Proxy", "LiteLLM Router"),
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__).union(
    ("message", "asctime", "taskName", "correlation_id")
)

# key=value / "key": "value" pairs whose key ends in secret/token/password/api_key
_KV_SECRET = r"\b(\w*(?:secret|token|password|passwd|api_key|apikey))(['\"]?\s*[=:]\s*['\"]?)([^\s'\"&;,]+)"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1 " + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), REDACTED),
    (re.compile(_KV_SECRET, re.IGNORECASE), r"\1\2" + REDACTED),
)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


@contextlib.contextmanager
def with_correlation(cid: str) -> Iterator[str]:
    """Set the correlation id for the enclosed code (and tasks created inside it)."""
    token = correlation_id.set(cid)
    try:
        yield cid
    finally:
        correlation_id.reset(token)


class RedactingFilter(logging.Filter):
    """Replace known secrets and secret-looking patterns with ``***``; never raises, never drops."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._secret_re: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        """Redact ``secret`` from now on (ignored if shorter than MIN_SECRET_LEN)."""
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LEN or secret in self._secrets:
            return
        self._secrets.add(secret)
        ordered = sorted(self._secrets, key=len, reverse=True)  # longest first: overlapping secrets
        self._secret_re = re.compile("|".join(re.escape(s) for s in ordered))

    def redact(self, text: str) -> str:
        if self._secret_re is not None:
            text = self._secret_re.sub(REDACTED, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact_record(record)
        except Exception:
            # Fail closed: better to lose a log line than to leak a secret.
            with contextlib.suppress(Exception):
                record.msg = "<log record suppressed: redaction failed>"
                record.args = ()
                record.exc_info = None
                record.exc_text = None
                record.stack_info = None
        return True

    def _redact_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = f"{_safe_str(record.msg)} [unformattable args: {_safe_str(record.args)}]"
        record.msg = self.redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key in _STANDARD_ATTRS or value is None or isinstance(value, bool | int | float):
                continue
            if _SECRET_FIELD.search(key):
                record.__dict__[key] = "***"  # extra={"token": ...}: the name says what the value is
                continue
            if isinstance(value, str):
                record.__dict__[key] = self.redact(value)
            else:
                text = _safe_str(value)
                redacted = self.redact(text)
                if redacted != text:
                    record.__dict__[key] = redacted


_SECRET_FIELD = re.compile(r"(secret|token|password|passwd|api_?key|authorization)$", re.IGNORECASE)


def _record_cid(record: logging.LogRecord) -> str:
    cid = record.__dict__.get("correlation_id")
    return cid if isinstance(cid, str) else correlation_id.get()


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return _safe_str(value)
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, correlation_id, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "correlation_id": _record_cid(record),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            payload[key if key not in payload else f"extra_{key}"] = _jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exc"] = record.exc_text
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``asctime level logger [cid] message``."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        record.__dict__.setdefault("correlation_id", _record_cid(record))
        return super().format(record)


def setup_logging(
    *,
    level: str = "INFO",
    json_format: bool = False,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> RedactingFilter:
    """Replace root handlers with one redacting handler; return its filter. Call after importing litellm."""
    levelno = logging.getLevelNamesMapping().get(level.upper())
    if levelno is None:
        raise ValueError(f"unknown log level: {level!r}")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if getattr(old, "_switchboard", False):
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._switchboard = True  # type: ignore[attr-defined]
    redactor = RedactingFilter(secrets)
    handler.addFilter(redactor)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root.addHandler(handler)
    root.setLevel(levelno)
    for name in NOISY_LOGGERS:  # e.g. LiteLLM installs its own (unredacted) stream handler
        noisy = logging.getLogger(name)
        noisy.setLevel(max(logging.WARNING, levelno))
        for old in list(noisy.handlers):
            noisy.removeHandler(old)
    return redactor
