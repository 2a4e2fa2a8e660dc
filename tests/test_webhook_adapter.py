"""The webhook adapter over real sockets on 127.0.0.1.

The adapter is real; the runtime is replaced by `FakeHost`, a small AdapterHost that serves the
adapter's routes from a real aiohttp server and records published messages (deduplicated by
platform message id, like the journal).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar, get_args

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import Adapter, Handler, PublishResult
from adapters.webhook import WebhookAdapter, WebhookConfig, create, parse_config
from adapters.webhook.adapter import map_response_error, parse_retry_after
from adapters.webhook.config import WebhookBotConfig, resolve_secrets
from adapters.webhook.convert import to_callback
from adapters.webhook.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    sign,
    signed_headers,
    verify,
)
from adapters.webhook.wire import AttachmentKind
from gateway.errors import (
    BackpressureError,
    ConfigError,
    PermanentSendError,
    RateLimited,
    TransientSendError,
)
from gateway.messages import (
    Attachment,
    ChatKind,
    InboundMessage,
    MarkdownPart,
    OutboundMessage,
    Target,
    TextPart,
)
from tests.fakes.webhook_peer import CallbackReceiver, make_payload, send_signed

SECRET = b"test-secret-0123456789"
OTHER_SECRET = b"some-other-secret"
MAX_BODY = 65536
T = TypeVar("T")


# ---- test double of the runtime -----------------------------------------------------------------


class FakeHost:
    """A minimal real AdapterHost: aiohttp server on 127.0.0.1:0, real ClientSession, recording publish."""

    def __init__(self) -> None:
        self._app = web.Application()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ids: dict[tuple[str, str, str], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.published: list[InboundMessage] = []
        self.accepting = True
        self.backpressure = False
        self.base_url = ""

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._session is not None, "FakeHost not started"
        return self._session

    async def publish(self, msg: InboundMessage, *, refusable: bool = True) -> PublishResult:
        if self.backpressure:
            raise BackpressureError("full")
        key = (msg.platform, msg.bot_id, msg.platform_msg_id)
        if key in self._ids:
            return PublishResult(inbound_id=self._ids[key], duplicate=True)
        self.published.append(msg)
        self._ids[key] = len(self.published)
        return PublishResult(inbound_id=len(self.published), duplicate=False)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        if self._runner is not None:
            raise RuntimeError("routes must be added before the server starts")
        self._app.router.add_route(method, path, handler)

    def spawn(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def is_accepting(self) -> bool:
        return self.accepting

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/callback"


def make_config(receiver_url: str = "http://127.0.0.1:9/unused", max_body: int = MAX_BODY) -> WebhookConfig:
    bot = {"secret_env": "OPS_SECRET", "callback_url": receiver_url, "timeout": 2.0}
    return WebhookConfig.model_validate(
        {
            "enabled": True,
            "max_body_bytes": max_body,
            "timestamp_window": 300,
            "bots": {
                "ops": bot,
                "slow": {**bot, "timeout": 0.3},
                "closed": {**bot, "callback_url": closed_port_url()},
                "wrong": bot,
            },
        }
    )


SECRETS = {"ops": SECRET, "slow": SECRET, "closed": SECRET, "wrong": b"not-what-the-receiver-expects"}


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver({"ops": SECRET, "slow": SECRET, "wrong": SECRET}) as r:
        yield r


@pytest.fixture
async def gateway(receiver: CallbackReceiver) -> AsyncIterator[tuple[FakeHost, WebhookAdapter]]:
    host = FakeHost()
    adapter = WebhookAdapter(make_config(receiver.url), SECRETS)
    await adapter.start(host)
    await host.start()
    try:
        yield host, adapter
    finally:
        await adapter.stop()
        await host.close()


def url(host: FakeHost, bot: str = "ops") -> str:
    return f"{host.base_url}/webhooks/webhook/{bot}"


async def post_raw(
    host: FakeHost, body: bytes | Any, headers: dict[str, str], bot: str = "ops"
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with host.http.post(url(host, bot), data=body, headers=headers) as resp:
        text = await resp.text()
        return resp.status, json.loads(text), dict(resp.headers)


def signed(body: bytes, secret: bytes = SECRET, ts: float | None = None) -> dict[str, str]:
    return signed_headers(secret, body, time.time() if ts is None else ts)


# ---- inbound ------------------------------------------------------------------------------------


async def test_valid_message_is_published_with_correct_fields(
    gateway: tuple[FakeHost, WebhookAdapter],
) -> None:
    host, adapter = gateway
    payload = make_payload("m-1", "chat-9", "u-7", "hello 你好", chat_type="group")
    payload["mentioned"] = True
    payload["attachments"] = [{"kind": "image", "ref": "img://1", "name": "a.png", "mime_type": "image/png"}]
    before = time.time()
    status, data = await send_signed(host.http, url(host), SECRET, payload)
    assert (status, data) == (200, {"ok": True, "duplicate": False, "id": 1})
    assert adapter.is_connected()
    [msg] = host.published
    assert msg.platform == "webhook"
    assert msg.bot_id == "ops"
    assert msg.platform_msg_id == "m-1"
    assert msg.chat_id == "chat-9"
    assert msg.chat_kind is ChatKind.GROUP
    assert msg.sender_id == "u-7"
    assert msg.sender_name == "user u-7"
    assert msg.text == "hello 你好"
    assert msg.mentioned is True
    assert msg.attachments == (Attachment(kind="image", ref="img://1", name="a.png", mime_type="image/png"),)
    assert msg.reply_ref == ""
    assert before - 1 <= msg.received_at.timestamp() <= time.time() + 1


async def test_replay_is_acknowledged_as_duplicate(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, _ = gateway
    payload = make_payload("m-dup", "c", "u", "hi")
    assert await send_signed(host.http, url(host), SECRET, payload) == (
        200,
        {"ok": True, "duplicate": False, "id": 1},
    )
    assert await send_signed(host.http, url(host), SECRET, payload) == (
        200,
        {"ok": True, "duplicate": True, "id": 1},
    )
    assert len(host.published) == 1


def _tamper_signature(body: bytes) -> dict[str, str]:
    headers = signed(body)
    headers[SIGNATURE_HEADER] = headers[SIGNATURE_HEADER][:-1] + ("0" if headers[SIGNATURE_HEADER][-1] != "0" else "1")
    return headers


def _without(name: str) -> Any:
    def make(body: bytes) -> dict[str, str]:
        headers = signed(body)
        del headers[name]
        return headers

    return make


@pytest.mark.parametrize(
    ("make_headers", "reason_part"),
    [
        pytest.param(_tamper_signature, "signature mismatch", id="bad-signature"),
        pytest.param(lambda b: signed(b, secret=OTHER_SECRET), "signature mismatch", id="wrong-secret"),
        pytest.param(lambda b: signed(b, ts=time.time() - 400), "too old", id="stale"),
        pytest.param(lambda b: signed(b, ts=time.time() + 400), "future", id="future"),
        pytest.param(_without(SIGNATURE_HEADER), "missing", id="missing-signature"),
        pytest.param(_without(TIMESTAMP_HEADER), "missing", id="missing-timestamp"),
        pytest.param(lambda b: {}, "missing", id="no-headers"),
        pytest.param(lambda b: {**signed(b), TIMESTAMP_HEADER: "12.5"}, "integer", id="non-integer-timestamp"),
        pytest.param(lambda b: {**signed(b), SIGNATURE_HEADER: "sha1=abc"}, "malformed", id="malformed"),
    ],
)
async def test_authentication_failures_are_401(
    gateway: tuple[FakeHost, WebhookAdapter], make_headers: Any, reason_part: str
) -> None:
    host, _ = gateway
    body = json.dumps(make_payload("m-auth", "c", "u", "hi")).encode()
    status, data, _ = await post_raw(host, body, make_headers(body))
    assert status == 401
    assert data["error"] == "unauthorized"
    assert reason_part in data["reason"]
    assert host.published == []


def _payload_with(**changes: Any) -> dict[str, Any]:
    payload = make_payload("m-schema", "c", "u", "hi")
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    return payload


@pytest.mark.parametrize(
    ("body", "detail_part"),
    [
        pytest.param(b"{not json", "Invalid JSON", id="malformed-json"),
        pytest.param(b"", "Invalid JSON", id="empty-body"),
        pytest.param(b"\xff\xfe\x00", "Invalid JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "object", id="array"),
        pytest.param(_payload_with(message_id=None), "message_id: Field required", id="missing-field"),
        pytest.param(_payload_with(chat_type="channel"), "chat_type", id="wrong-chat-type"),
        pytest.param(_payload_with(extra="x"), "extra: Extra inputs are not permitted", id="extra-field"),
        pytest.param(_payload_with(text="x" * 20001), "text: String should have at most", id="text-too-long"),
        pytest.param(_payload_with(message_id=""), "message_id", id="empty-id"),
        pytest.param(_payload_with(message_id="a\nb"), "message_id", id="control-char-id"),
        pytest.param(_payload_with(mentioned="yes"), "mentioned", id="no-coercion"),
        pytest.param(_payload_with(sender={"id": "u", "role": "admin"}), "sender.role", id="extra-nested"),
        pytest.param(_payload_with(text=""), "neither text nor attachments", id="empty-message"),
        pytest.param(
            _payload_with(attachments=[{"kind": "file", "ref": "r"}] * 21), "attachments", id="too-many-files"
        ),
    ],
)
async def test_invalid_payloads_are_400(
    gateway: tuple[FakeHost, WebhookAdapter], body: dict[str, Any] | bytes, detail_part: str
) -> None:
    host, _ = gateway
    status, data = await send_signed(host.http, url(host), SECRET, body)
    assert status == 400
    assert data["error"] == "invalid payload"
    assert any(detail_part in d for d in data["details"]), data["details"]
    assert "Traceback" not in json.dumps(data)
    assert host.published == []


def _padded_body(size: int) -> bytes:
    base = json.dumps(make_payload("m-big", "c", "u", "")).encode()
    escaped, plain = divmod(size - len(base), 6)  # "é" is sent as the 6 bytes \u00e9
    body = json.dumps(make_payload("m-big", "c", "u", "é" * escaped + "x" * plain)).encode()
    assert len(body) == size
    return body


async def test_body_size_limit_is_inclusive(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, _ = gateway
    status, _ = await send_signed(host.http, url(host), SECRET, _padded_body(MAX_BODY))
    assert status == 200
    status, data = await send_signed(host.http, url(host), SECRET, _padded_body(MAX_BODY + 1))
    assert status == 413
    assert data == {"error": "body too large", "limit": MAX_BODY}
    assert len(host.published) == 1


async def test_oversized_chunked_body_is_413_without_buffering(
    gateway: tuple[FakeHost, WebhookAdapter],
) -> None:
    host, _ = gateway
    body = _padded_body(MAX_BODY + 4000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    status, data, _ = await post_raw(host, chunks(), signed(body))
    assert status == 413
    assert data["error"] == "body too large"
    assert host.published == []


async def test_valid_chunked_body_is_accepted(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, _ = gateway
    body = json.dumps(make_payload("m-chunked", "c", "u", "hello")).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    status, data, _ = await post_raw(host, chunks(), signed(body))
    assert (status, data["ok"]) == (200, True)
    assert [m.platform_msg_id for m in host.published] == ["m-chunked"]


async def test_unknown_bot_is_404(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, _ = gateway
    status, data = await send_signed(host.http, url(host, "nobody"), SECRET, make_payload("m", "c", "u", "x"))
    assert (status, data) == (404, {"error": "unknown bot"})
    assert host.published == []


async def test_not_accepting_is_503_with_retry_after(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, _ = gateway
    host.accepting = False
    body = json.dumps(make_payload("m-503", "c", "u", "x")).encode()
    status, data, headers = await post_raw(host, body, signed(body))
    assert (status, data["error"], headers["Retry-After"]) == (503, "not accepting", "1")
    assert host.published == []


async def test_backpressure_is_503_with_retry_after(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, _ = gateway
    host.backpressure = True
    body = json.dumps(make_payload("m-bp", "c", "u", "x")).encode()
    status, data, headers = await post_raw(host, body, signed(body))
    assert status == 503
    assert data["error"] == "busy"
    assert int(headers["Retry-After"]) >= 1
    host.backpressure = False
    status, data, _ = await post_raw(host, body, signed(body))
    assert (status, data["duplicate"]) == (200, False)


async def test_after_stop_requests_are_503(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, adapter = gateway
    await adapter.stop()
    assert not adapter.is_connected()
    status, _ = await send_signed(host.http, url(host), SECRET, make_payload("m", "c", "u", "x"))
    assert status == 503


async def test_keeps_serving_after_every_kind_of_rejection(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    host, _ = gateway
    good = json.dumps(make_payload("m-ok", "c", "u", "still here")).encode()
    oversized = _padded_body(MAX_BODY + 1)

    async def chunked() -> AsyncIterator[bytes]:
        yield oversized

    attempts: list[tuple[Any, dict[str, str], str, int]] = [
        (good, _tamper_signature(good), "ops", 401),
        (good, signed(good, ts=time.time() - 1000), "ops", 401),
        (good, {}, "ops", 401),
        (b"{", signed(b"{"), "ops", 400),
        (b"{}", signed(b"{}"), "ops", 400),
        (oversized, signed(oversized), "ops", 413),
        (chunked(), signed(oversized), "ops", 413),
        (good, signed(good), "nobody", 404),
    ]
    for body, headers, bot, expected in attempts:
        status, _, _ = await post_raw(host, body, headers, bot=bot)
        assert status == expected
    assert host.published == []
    status, data, _ = await post_raw(host, good, signed(good))
    assert (status, data) == (200, {"ok": True, "duplicate": False, "id": 1})


async def test_rejections_log_one_line_without_body_or_secret(
    gateway: tuple[FakeHost, WebhookAdapter], caplog: pytest.LogCaptureFixture
) -> None:
    host, _ = gateway
    body = json.dumps(make_payload("m-log", "c", "u", "BODY-CONTENT-MARKER", chat_type="nope")).encode()
    with caplog.at_level(logging.INFO, logger="adapters.webhook"):
        await post_raw(host, body, _tamper_signature(body))
        await post_raw(host, body, signed(body))
    records = [r for r in caplog.records if r.name.startswith("adapters.webhook")]
    assert len(records) == 2
    assert "401" in records[0].getMessage()
    assert "400" in records[1].getMessage()
    for text in (caplog.text, *(r.getMessage() for r in records)):
        assert "BODY-CONTENT-MARKER" not in text
        assert SECRET.decode() not in text


# ---- outbound -----------------------------------------------------------------------------------


def outbound(bot: str = "ops", key: str = "key-1") -> OutboundMessage:
    target = Target(
        platform="webhook", bot_id=bot, chat_id="chat-1", chat_kind=ChatKind.DIRECT, user_id="u-1", in_reply_to="m-1"
    )
    return OutboundMessage(
        target=target, parts=(TextPart(text="hello"), MarkdownPart(text="**world**")), idempotency_key=key
    )


async def test_send_delivers_signed_callback(
    gateway: tuple[FakeHost, WebhookAdapter], receiver: CallbackReceiver
) -> None:
    _, adapter = gateway
    msg = outbound()
    receipt = await adapter.send(msg)
    assert receipt.platform_msg_id == "cb-key-1"
    assert receiver.bad == []
    [delivery] = receiver.visible()
    assert delivery.idempotency_key == "key-1"
    assert delivery.body == to_callback(msg)
    assert delivery.body == {
        "idempotency_key": "key-1",
        "bot_id": "ops",
        "chat_id": "chat-1",
        "in_reply_to": "m-1",
        "user_id": "u-1",
        "parts": [{"type": "text", "text": "hello"}, {"type": "markdown", "text": "**world**"}],
        "text": "hello\n\n**world**",
    }
    verify(SECRET, delivery.headers, delivery.raw, time.time(), 5)


async def test_resend_keeps_idempotency_key(
    gateway: tuple[FakeHost, WebhookAdapter], receiver: CallbackReceiver
) -> None:
    _, adapter = gateway
    await adapter.send(outbound(key="same"))
    await adapter.send(outbound(key="same"))
    assert [d.idempotency_key for d in receiver.deliveries] == ["same", "same"]
    assert len(receiver.visible()) == 1


@pytest.mark.parametrize(
    ("status", "headers", "error_type", "code"),
    [
        (500, None, TransientSendError, "500"),
        (503, None, TransientSendError, "503"),
        (408, None, TransientSendError, "408"),
        (400, None, PermanentSendError, "400"),
        (404, None, PermanentSendError, "404"),
        (403, None, PermanentSendError, "403"),
    ],
)
async def test_send_maps_error_statuses(
    gateway: tuple[FakeHost, WebhookAdapter],
    receiver: CallbackReceiver,
    status: int,
    headers: dict[str, str] | None,
    error_type: type[Exception],
    code: str,
) -> None:
    _, adapter = gateway
    receiver.fail_next(1, status, headers)
    with pytest.raises(error_type) as info:
        await adapter.send(outbound())
    assert type(info.value) is error_type
    assert getattr(info.value, "code", None) == code
    assert receiver.visible() == []
    await adapter.send(outbound())  # the script is used up: the next send succeeds
    assert len(receiver.visible()) == 1


async def test_send_429_is_rate_limited_with_retry_after(
    gateway: tuple[FakeHost, WebhookAdapter], receiver: CallbackReceiver
) -> None:
    _, adapter = gateway
    receiver.fail_next(1, 429, {"Retry-After": "7"})
    with pytest.raises(RateLimited) as info:
        await adapter.send(outbound())
    assert info.value.retry_after == 7
    assert info.value.code == "429"
    assert info.value.retryable


async def test_send_rejected_signature_is_permanent(
    gateway: tuple[FakeHost, WebhookAdapter], receiver: CallbackReceiver
) -> None:
    _, adapter = gateway
    with pytest.raises(PermanentSendError) as info:
        await adapter.send(outbound(bot="wrong"))
    assert info.value.code == "401"
    assert len(receiver.bad) == 1


async def test_send_to_closed_port_is_transient(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    _, adapter = gateway
    with pytest.raises(TransientSendError) as info:
        await adapter.send(outbound(bot="closed"))
    assert info.value.code == "network"


async def test_send_to_slow_receiver_times_out_as_transient(
    gateway: tuple[FakeHost, WebhookAdapter], receiver: CallbackReceiver
) -> None:
    _, adapter = gateway
    receiver.delay_next(1, 3.0)
    started = time.monotonic()
    with pytest.raises(TransientSendError) as info:
        await adapter.send(outbound(bot="slow"))
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 2.0
    # The receiver got it even though the ack was lost: a resend with the same key is deduplicated.
    assert len(receiver.attempts) == 1


async def test_send_for_unknown_bot_is_permanent(gateway: tuple[FakeHost, WebhookAdapter]) -> None:
    _, adapter = gateway
    with pytest.raises(PermanentSendError):
        await adapter.send(outbound(bot="ghost"))


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {}, None),
        (204, {}, None),
        (429, {"retry-after": "7"}, RateLimited),
        (429, {}, RateLimited),
        (425, {}, TransientSendError),
        (502, {}, TransientSendError),
        (599, {}, TransientSendError),
        (401, {}, PermanentSendError),
        (422, {}, PermanentSendError),
        (302, {}, PermanentSendError),
    ],
)
def test_map_response_error_table(status: int, headers: dict[str, str], expected: type[Exception] | None) -> None:
    err = map_response_error(status, headers, "body")
    if expected is None:
        assert err is None
    else:
        assert type(err) is expected
        assert err.code == str(status)


def test_retry_after_forms() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("7", now) == 7
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    assert parse_retry_after(date, now) == pytest.approx(30)
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now - 30))
    assert parse_retry_after(past, now) == 0
    err = map_response_error(429, {"Retry-After": date}, "", now=now)
    assert isinstance(err, RateLimited)
    assert err.retry_after == pytest.approx(30)


# ---- signing ------------------------------------------------------------------------------------


def test_sign_matches_spec() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"k", b"1700000000." + b'{"a":1}', hashlib.sha256).hexdigest()
    assert sign(b"k", 1700000000, b'{"a":1}') == expected
    assert signed_headers(b"k", b'{"a":1}', 1700000000.9) == {
        "X-Switchboard-Timestamp": "1700000000",
        "X-Switchboard-Signature": "v1=" + expected,
    }


def test_verify_round_trip_and_case_insensitive_headers() -> None:
    now = 1_700_000_000.0
    headers = signed_headers(SECRET, b"body", now)
    verify(SECRET, headers, b"body", now, 300)
    lowered = {k.lower(): v for k, v in headers.items()}
    verify(SECRET, lowered, b"body", now, 300)
    upper_hex = {**headers, SIGNATURE_HEADER: "v1=" + headers[SIGNATURE_HEADER][3:].upper()}
    verify(SECRET, upper_hex, b"body", now, 300)


@pytest.mark.parametrize(
    ("mutate", "reason_part"),
    [
        (lambda h, b: (h, b + b" "), "mismatch"),
        (lambda h, b: (h, b""), "mismatch"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: str(int(h[TIMESTAMP_HEADER]) + 1)}, b), "mismatch"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: " " + h[TIMESTAMP_HEADER]}, b), "integer"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "+" + h[TIMESTAMP_HEADER]}, b), "integer"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "1_700_000_000"}, b), "integer"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: ""}, b), "integer"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: h[SIGNATURE_HEADER][3:]}, b), "malformed"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "v2=" + h[SIGNATURE_HEADER][3:]}, b), "malformed"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: h[SIGNATURE_HEADER] + "00"}, b), "malformed"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "v1=" + "é" * 64}, b), "malformed"),
        (lambda h, b: ({TIMESTAMP_HEADER: h[TIMESTAMP_HEADER]}, b), "missing"),
        (lambda h, b: ({SIGNATURE_HEADER: h[SIGNATURE_HEADER]}, b), "missing"),
    ],
)
def test_verify_detects_tampering(mutate: Any, reason_part: str) -> None:
    now = 1_700_000_000.0
    headers, body = mutate(signed_headers(SECRET, b"payload", now), b"payload")
    with pytest.raises(SignatureError) as info:
        verify(SECRET, headers, body, now, 300)
    assert reason_part in info.value.reason


def test_verify_window_edges() -> None:
    ts = 1_700_000_000
    headers = signed_headers(SECRET, b"x", ts)
    verify(SECRET, headers, b"x", ts + 300, 300)  # exactly at the edge: accepted
    verify(SECRET, headers, b"x", ts - 300, 300)
    with pytest.raises(SignatureError, match="too old"):
        verify(SECRET, headers, b"x", ts + 300.5, 300)
    with pytest.raises(SignatureError, match="future"):
        verify(SECRET, headers, b"x", ts - 300.5, 300)


# ---- config -------------------------------------------------------------------------------------


def test_create_from_raw_config(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"file-secret\n")
    raw = {
        "enabled": True,
        "bots": {
            "ops": {"secret_env": "OPS_SECRET", "callback_url": "https://example.invalid/cb"},
            "ci": {"secret_file": str(secret_file), "callback_url": "http://127.0.0.1:1/cb", "timeout": 3},
        },
    }
    adapter: Adapter = create(raw, {"OPS_SECRET": "env-secret"})  # statically checks the Protocol
    assert adapter.name == "webhook"
    assert not adapter.is_connected()
    cfg = parse_config(raw)
    assert resolve_secrets(cfg, {"OPS_SECRET": "env-secret"}) == {"ops": b"env-secret", "ci": b"file-secret"}
    assert cfg.bots["ci"].timeout == 3
    assert parse_config({}) == WebhookConfig()
    assert not WebhookConfig().enabled


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        (
            {"bots": {"ops": {"secret_env": "OPS_SECRET", "callback_url": "http://h/cb"}}},
            {},
            "adapters.webhook.bots.ops.secret_env: environment variable OPS_SECRET is not set",
        ),
        (
            {"bots": {"ops": {"secret_env": "OPS_SECRET", "callback_url": "http://h/cb"}}},
            {"OPS_SECRET": ""},
            "adapters.webhook.bots.ops.secret_env: environment variable OPS_SECRET is empty",
        ),
        (
            {"bots": {"ops": {"secret_file": "/nonexistent/secret", "callback_url": "http://h/cb"}}},
            {},
            "adapters.webhook.bots.ops.secret_file: cannot read /nonexistent/secret",
        ),
        (
            {"bots": {"ops": {"callback_url": "http://h/cb"}}},
            {},
            "adapters.webhook.bots.ops: exactly one of secret_env or secret_file is required",
        ),
        (
            {"bots": {"ops": {"secret_env": "A", "secret_file": "/x", "callback_url": "http://h/cb"}}},
            {},
            "adapters.webhook.bots.ops: exactly one of secret_env or secret_file is required",
        ),
        (
            {"bots": {"ops": {"secret": "inline!", "secret_env": "A", "callback_url": "http://h/cb"}}},
            {},
            "adapters.webhook.bots.ops.secret: Extra inputs are not permitted",
        ),
        (
            {"bots": {"ops": {"secret_env": "A", "callback_url": "ftp://h/cb"}}},
            {},
            "adapters.webhook.bots.ops.callback_url: must be an absolute http:// or https:// URL",
        ),
        (
            {"bots": {"ops": {"secret_env": "A", "callback_url": "http://h/cb", "timeout": 0}}},
            {},
            "adapters.webhook.bots.ops.timeout: ",
        ),
        ({"max_body_bytes": -1}, {}, "adapters.webhook.max_body_bytes: "),
        ({"bogus": 1}, {}, "adapters.webhook.bogus: Extra inputs are not permitted"),
        (
            {"bots": {"bad id/x": {"secret_env": "A", "callback_url": "http://h"}}},
            {},
            "adapters.webhook.bots.bad id/x:",
        ),
    ],
)
def test_config_errors_name_the_key_path(raw: dict[str, Any], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        create(raw, env)
    assert str(info.value).startswith(message), str(info.value)


def test_adapter_requires_a_secret_per_bot() -> None:
    cfg = WebhookConfig(bots={"ops": WebhookBotConfig(secret_env="X", callback_url="http://h/cb")})
    with pytest.raises(ConfigError, match=r"adapters\.webhook\.bots\.ops: no secret"):
        WebhookAdapter(cfg, {})


def test_wire_attachment_kinds_match_core() -> None:
    assert get_args(AttachmentKind) == get_args(Attachment.model_fields["kind"].annotation)


# ---- fuzz ---------------------------------------------------------------------------------------

FUZZ_MAX_BODY = 2048
_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}


class BackgroundLoop:
    """An event loop in a thread, so a sync hypothesis test can drive one long-lived server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)

    def __enter__(self) -> BackgroundLoop:
        self._thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def _is_id(value: Any, max_len: int) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= max_len and not (set(value) & _CONTROL)


def _is_str(value: Any, max_len: int) -> bool:
    return isinstance(value, str) and len(value) <= max_len


def _valid_attachment(a: Any) -> bool:
    allowed = {"kind", "ref", "name", "mime_type", "size"}
    if not isinstance(a, dict) or not {"kind", "ref"} <= set(a) or set(a) - allowed:
        return False
    size = a.get("size")
    return (
        a["kind"] in get_args(AttachmentKind)
        and isinstance(a["ref"], str)
        and 1 <= len(a["ref"]) <= 2048
        and _is_str(a.get("name", ""), 256)
        and _is_str(a.get("mime_type", ""), 128)
        and (size is None or (type(size) is int and 0 <= size <= 2**63 - 1))
    )


def _all_strings_encodable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(_all_strings_encodable(v) for v in value)
    if isinstance(value, dict):
        return all(_all_strings_encodable(k) and _all_strings_encodable(v) for k, v in value.items())
    return True


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def oracle(body: bytes) -> dict[str, Any] | None:
    """An independent, hand-written reading of the wire spec: the payload if valid, else None."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:
        return None
    if not isinstance(data, dict) or not _all_strings_encodable(data):
        return None
    required = {"message_id", "chat_id", "chat_type", "sender"}
    allowed = required | {"text", "mentioned", "attachments"}
    if not required <= set(data) or set(data) - allowed:
        return None
    sender = data["sender"]
    attachments = data.get("attachments", [])
    text = data.get("text", "")
    ok = (
        _is_id(data["message_id"], 128)
        and _is_id(data["chat_id"], 256)
        and data["chat_type"] in ("direct", "group")
        and isinstance(sender, dict)
        and "id" in sender
        and not set(sender) - {"id", "name"}
        and _is_id(sender["id"], 256)
        and _is_str(sender.get("name", ""), 256)
        and _is_str(text, 20000)
        and type(data.get("mentioned", False)) is bool
        and isinstance(attachments, list)
        and len(attachments) <= 20
        and all(_valid_attachment(a) for a in attachments)
        and bool(text.strip() or attachments)
    )
    return data if ok else None


json_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
id_values = st.text(min_size=1, max_size=12) | st.text(max_size=140) | json_scalars
attachment_values = st.fixed_dictionaries(
    {"kind": st.sampled_from([*get_args(AttachmentKind), "bogus"]), "ref": st.text(max_size=12)},
    optional={
        "name": st.text(max_size=10) | json_scalars,
        "mime_type": st.text(max_size=10),
        "size": st.integers(min_value=-5, max_value=2**64) | json_scalars,
        "junk": json_scalars,
    },
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "message_id": id_values,
    "chat_id": id_values,
    "chat_type": st.sampled_from(["direct", "group", "channel", "", "DIRECT"]) | json_scalars,
    "sender": st.fixed_dictionaries(
        {"id": id_values}, optional={"name": st.text(max_size=20) | json_scalars, "role": json_scalars}
    )
    | json_values,
    "text": st.text(max_size=40) | json_scalars,
    "mentioned": st.booleans() | json_scalars,
    "attachments": st.lists(attachment_values, max_size=3) | st.lists(attachment_values, min_size=21, max_size=22),
    "junk": json_values,
}


@st.composite
def near_valid_payloads(draw: st.DrawFn) -> dict[str, Any]:
    """A valid payload with zero to two fields replaced or removed."""
    payload = make_payload(
        draw(st.text(min_size=1, max_size=12)),
        draw(st.text(min_size=1, max_size=12)),
        draw(st.text(min_size=1, max_size=12)),
        draw(st.text(min_size=1, max_size=40)),
        chat_type=draw(st.sampled_from(["direct", "group"])),
    )
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        key = draw(st.sampled_from(sorted(FIELD_VALUES)))
        if draw(st.booleans()):
            payload.pop(key, None)
        else:
            payload[key] = draw(FIELD_VALUES[key])
    return payload


def _encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8")


fuzz_bodies = st.one_of(
    st.builds(_encode, near_valid_payloads(), st.booleans()),
    st.builds(_encode, near_valid_payloads(), st.booleans()),
    st.builds(_encode, json_values, st.booleans()),
    st.binary(max_size=200),
    st.builds(
        lambda n, base: base + b" " * n, st.integers(FUZZ_MAX_BODY - 64, FUZZ_MAX_BODY + 64), st.binary(max_size=8)
    ),
)


def test_fuzz_inbound_never_500_and_never_publishes_invalid() -> None:
    with BackgroundLoop() as bg:
        host = FakeHost()
        adapter = WebhookAdapter(make_config(max_body=FUZZ_MAX_BODY), SECRETS)
        bg.run(adapter.start(host))
        bg.run(host.start())
        seen_ids: set[str] = set()
        statuses: dict[int, int] = {}

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            derandomize=True,  # the same 200 bodies on every run: the coverage floor below cannot flake
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=fuzz_bodies)
        def check(body: bytes) -> None:
            before = len(host.published)
            status, data = bg.run(send_signed(host.http, url(host), SECRET, body))
            statuses[status] = statuses.get(status, 0) + 1
            expected = oracle(body) if len(body) <= FUZZ_MAX_BODY else None
            if len(body) > FUZZ_MAX_BODY:
                assert status == 413
            elif expected is None:
                assert status == 400, (status, data)
            else:
                assert status == 200, (status, data)
            if status != 200:
                assert len(host.published) == before
                return
            assert expected is not None
            msg_id = expected["message_id"]
            assert data["duplicate"] == (msg_id in seen_ids)
            if msg_id in seen_ids:
                assert len(host.published) == before
                return
            seen_ids.add(msg_id)
            [msg] = host.published[before:]
            assert msg.platform_msg_id == msg_id
            assert msg.chat_id == expected["chat_id"]
            assert msg.chat_kind.value == expected["chat_type"]
            assert msg.sender_id == expected["sender"]["id"]
            assert msg.text == expected.get("text", "")
            assert len(msg.attachments) == len(expected.get("attachments", []))
            # built without re-validation (convert.to_inbound): it must be exactly what validation gives,
            # and survive the journal's JSON round trip unchanged
            assert InboundMessage.model_validate(msg.model_dump()) == msg
            assert InboundMessage.model_validate_json(msg.model_dump_json()) == msg

        try:
            check()
        finally:
            bg.run(adapter.stop())
            bg.run(host.close())
        assert statuses.get(200, 0) > 10, statuses  # the generator must actually reach the happy path
        assert statuses.get(400, 0) > 10, statuses


def test_whitespace_only_text_is_not_a_message() -> None:
    import pydantic

    from adapters.webhook.wire import WebhookInbound

    body = {"message_id": "m", "chat_id": "c", "chat_type": "direct", "sender": {"id": "u"}, "text": " \n\t "}
    with pytest.raises(pydantic.ValidationError, match="neither text nor attachments"):
        WebhookInbound.model_validate(body)
