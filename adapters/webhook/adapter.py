"""The generic signed-JSON webhook adapter.

Inbound: `POST /webhooks/webhook/{bot_id}` with a signed JSON body; the request is acknowledged
(200) only after `host.publish` has journaled it durably, so a sender that sees 200 may forget the
message and a sender that sees anything else must retry (retries are deduplicated by message id).
Outbound: every reply part is POSTed, signed with the same bot secret, to the bot's callback URL with
an `Idempotency-Key` header that stays the same across resends.

Checks run cheapest-first (bot lookup, readiness, size, signature, schema) and nothing is stored on
any rejection. Rejections log one line without body content or secrets.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import ValidationError

from adapters.base import AdapterHost, ReplyStream, SendReceipt
from adapters.httpio import read_bounded
from adapters.webhook.config import WebhookConfig
from adapters.webhook.convert import PLATFORM, to_callback, to_inbound
from adapters.webhook.signing import SignatureError, find_header, signed_headers, verify
from adapters.webhook.wire import WebhookInbound
from gateway.errors import (
    BackpressureError,
    ConfigError,
    PermanentSendError,
    RateLimited,
    SendError,
    TransientSendError,
)
from gateway.messages import OutboundMessage, Target

log = logging.getLogger(__name__)

ROUTE = "/webhooks/webhook/{bot_id}"
IDEMPOTENCY_HEADER = "Idempotency-Key"
RETRY_AFTER_NOT_ACCEPTING = 1
RETRY_AFTER_BACKPRESSURE = 2
MAX_CALLBACK_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_DETAILS = 10
_SECONDS_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _json_error(status: int, error: str, headers: Mapping[str, str] | None = None, **extra: Any) -> web.Response:
    return web.json_response({"error": error, **extra}, status=status, headers=headers)


def _log_id(value: str) -> str:
    """A caller-controlled string made safe for one log line."""
    return repr(value[:64])


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta seconds or an HTTP date); None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS_RE.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def map_response_error(
    status: int, headers: Mapping[str, str], body_text: str, *, now: float | None = None
) -> SendError | None:
    """The single place a callback HTTP response is turned into a typed send error (None on 2xx).

    429 → RateLimited; 408, 425 and 5xx → TransientSendError; everything else (401/403, other 4xx,
    unexpected 1xx/3xx since redirects are not followed) → PermanentSendError. `code` is the status.
    The webhook secret is static, so 401/403 cannot be fixed by a retry and are permanent.
    """
    if 200 <= status < 300:
        return None
    code = str(status)
    snippet = body_text[:200]
    message = f"webhook callback answered HTTP {status}" + (f": {snippet}" if snippet else "")
    if status == 429:
        retry_after = parse_retry_after(find_header(headers, "Retry-After"), time.time() if now is None else now)
        return RateLimited(message, code=code, retry_after=retry_after)
    if status in (408, 425) or 500 <= status < 600:
        return TransientSendError(message, code=code)
    return PermanentSendError(message, code=code)


class WebhookAdapter:
    """Adapter for any internal system speaking the signed-JSON webhook protocol (one or more bots)."""

    name = "webhook"

    def __init__(
        self,
        config: WebhookConfig,
        secrets: dict[str, bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        missing = sorted(set(config.bots) - set(secrets))
        if missing:
            raise ConfigError(f"adapters.webhook.bots.{missing[0]}: no secret was resolved for this bot")
        self._config = config
        # Only configured bots are served, whatever else the mapping holds.
        self._secrets = {bot_id: secrets[bot_id] for bot_id in config.bots}
        self._clock = clock
        self._host: AdapterHost | None = None
        self._started = False

    async def start(self, host: AdapterHost) -> None:
        """Mount the inbound route; sending uses the host's shared HTTP session."""
        self._host = host
        host.add_route("POST", ROUTE, self._handle)
        self._started = True

    async def stop(self) -> None:
        """Nothing to close: the route stays mounted but answers 503 and the HTTP session is the host's."""
        self._started = False

    def is_connected(self) -> bool:
        """True between start and stop: there is no upstream connection that could drop."""
        return self._started

    async def _handle(self, request: web.Request) -> web.Response:
        bot_id = request.match_info["bot_id"]
        secret = self._secrets.get(bot_id)
        if secret is None:
            return self._reject(request, bot_id, 404, "unknown bot")
        host = self._host
        if host is None or not self._started or not host.is_accepting():
            return self._reject(request, bot_id, 503, "not accepting", {"Retry-After": str(RETRY_AFTER_NOT_ACCEPTING)})

        limit = self._config.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            body, too_large = b"", True
        else:
            body, too_large = await read_bounded(request.content, limit)
        if too_large:
            resp = self._reject(request, bot_id, 413, "body too large", limit=limit)
            resp.force_close()  # do not keep a connection whose request body we did not consume
            return resp

        now = self._clock()
        try:
            verify(secret, request.headers, body, now, self._config.timestamp_window)
        except SignatureError as exc:
            return self._reject(request, bot_id, 401, "unauthorized", reason=exc.reason, level=logging.WARNING)

        try:
            wire = WebhookInbound.model_validate_json(body)
        except ValidationError as exc:
            return self._reject_invalid(request, bot_id, exc)

        msg = to_inbound(bot_id, wire, datetime.fromtimestamp(now, UTC))
        try:
            result = await host.publish(msg)
        except BackpressureError:
            return self._reject(request, bot_id, 503, "busy", {"Retry-After": str(RETRY_AFTER_BACKPRESSURE)})
        except Exception:  # e.g. disk full: not journaled, so not acked; the sender must retry
            log.exception("could not journal a webhook message for bot %s", _log_id(bot_id))
            return _json_error(
                503, "temporarily unable to accept messages", {"Retry-After": str(RETRY_AFTER_BACKPRESSURE)}
            )
        return web.json_response({"ok": True, "duplicate": result.duplicate, "id": result.inbound_id})

    def _reject(
        self,
        request: web.Request,
        bot_id: str,
        status: int,
        error: str,
        headers: Mapping[str, str] | None = None,
        *,
        level: int = logging.INFO,
        **extra: Any,
    ) -> web.Response:
        detail = f" ({extra['reason']})" if "reason" in extra else ""
        log.log(
            level,
            "webhook request rejected: %d %s%s bot=%s remote=%s",
            status,
            error,
            detail,
            _log_id(bot_id),
            request.remote,
        )
        return _json_error(status, error, headers, **extra)

    def _reject_invalid(self, request: web.Request, bot_id: str, exc: ValidationError) -> web.Response:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        details = [f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in errors[:MAX_ERROR_DETAILS]]
        # Locations may contain caller-chosen keys, so only the error types are logged.
        kinds = ",".join(sorted({str(e["type"]) for e in errors}))
        log.info(
            "webhook request rejected: 400 invalid payload (%d errors: %s) bot=%s remote=%s",
            len(errors),
            kinds,
            _log_id(bot_id),
            request.remote,
        )
        return _json_error(400, "invalid payload", details=details)

    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """No size limit worth cutting for: one reply is one message."""
        return [reply]

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """Replies are delivered whole."""
        return None

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """POST one reply to the bot's callback URL; raise a SendError subclass on any failure."""
        bot_id = msg.target.bot_id
        bot = self._config.bots.get(bot_id)
        secret = self._secrets.get(bot_id)
        if bot is None or secret is None or msg.target.platform != PLATFORM:
            raise PermanentSendError(f"no webhook bot {bot_id!r}", code="unknown_bot")
        if self._host is None:
            raise TransientSendError("webhook adapter not started", code="not_started")

        body = json.dumps(to_callback(msg), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = signed_headers(secret, body, self._clock())
        headers["Content-Type"] = "application/json"
        headers[IDEMPOTENCY_HEADER] = msg.idempotency_key
        try:
            async with self._host.http.post(
                bot.callback_url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=bot.timeout),
                allow_redirects=False,
            ) as resp:
                raw, _ = await read_bounded(resp.content, MAX_CALLBACK_RESPONSE_BYTES)
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise TransientSendError(f"webhook callback timed out after {bot.timeout}s", code="timeout") from exc
        except aiohttp.ClientError as exc:
            raise TransientSendError(f"webhook callback failed: {type(exc).__name__}", code="network") from exc

        text = raw.decode("utf-8", errors="replace")
        error = map_response_error(status, resp_headers, text, now=self._clock())
        if error is not None:
            raise error
        return SendReceipt(platform_msg_id=_receipt_id(text))


def _receipt_id(text: str) -> str:
    """The receiver's `message_id` if it answered with a JSON object carrying one, else ""."""
    try:
        data = json.loads(text)
    except ValueError:
        return ""
    if isinstance(data, dict):
        value = data.get("message_id")
        if isinstance(value, str):
            return value
    return ""
