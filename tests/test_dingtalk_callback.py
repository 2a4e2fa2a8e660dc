"""HTTP outgoing-robot callbacks, driven over a real aiohttp server on 127.0.0.1: sign, freshness, limits."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.base import AdapterState
from adapters.dingtalk import callback
from adapters.dingtalk.callback import ROUTE, CallbackRejected, make_handler, signature, verify_and_parse
from adapters.dingtalk.wire import BotMessage
from gateway.errors import BackpressureError
from gateway.host import NamespacedState
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_kv import SqliteKeyValueStore
from tests.fakes.dingtalk_api import APP_SECRET

NOW = 1_767_323_045.0  # seconds
WINDOW = 3600.0
MAX = 8 * 1024


def message(**fields: Any) -> dict[str, Any]:
    base = {
        "msgId": "msg-1",
        "msgtype": "text",
        "conversationType": "1",
        "conversationId": "cidDM==",
        "senderStaffId": "staff001",
        "senderId": "$:LWCP_v1:$alice",
        "sessionWebhook": "https://oapi.dingtalk.com/robot/sendBySession?session=s",
        "sessionWebhookExpiredTime": int(NOW * 1000) + 5_400_000,
        "text": {"content": "hello"},
    }
    return {**base, **fields}


def expected_sign(timestamp: str, secret: str = APP_SECRET) -> str:
    """Computed here independently of the module under test (protocols.md B3)."""
    mac = hmac.new(secret.encode(), (timestamp + "\n" + secret).encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def signed(ts_ms: int | None = None, secret: str = APP_SECRET) -> dict[str, str]:
    timestamp = str(int(NOW * 1000) if ts_ms is None else ts_ms)
    return {"timestamp": timestamp, "sign": expected_sign(timestamp, secret)}


@dataclass
class Harness:
    url: str
    http: aiohttp.ClientSession
    published: list[tuple[str, BotMessage]] = field(default_factory=list)
    publish_error: Exception | None = None
    accepting: bool = True

    async def post(self, body: bytes | dict[str, Any], headers: dict[str, str], bot: str = "bot1") -> tuple[int, Any]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        async with self.http.post(f"{self.url}/webhooks/dingtalk/{bot}", data=data, headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None


@contextlib.asynccontextmanager
async def running(state: AdapterState | None = None) -> AsyncIterator[Harness]:
    """The callback handler served on 127.0.0.1 (a fresh handler each time: a restart when `state` is shared)."""
    secrets = {"bot1": APP_SECRET, "streambot": None}
    holder: list[Harness] = []

    async def publish(bot_id: str, msg: BotMessage) -> None:
        h = holder[0]
        if h.publish_error is not None:
            raise h.publish_error
        h.published.append((bot_id, msg))

    handler = make_handler(
        secrets.get,
        publish,
        max_body_bytes=MAX,
        timestamp_window=WINDOW,
        clock=lambda: NOW,
        accepting=lambda: holder[0].accepting,
        state=state,
    )
    app = web.Application()
    app.router.add_post(ROUTE, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            holder.append(Harness(f"http://127.0.0.1:{port}", http))
            yield holder[0]
    finally:
        await runner.cleanup()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running() as h:
        yield h


async def test_a_restart_does_not_reopen_a_captured_pair_for_another_body(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "state.sqlite3")
    await db.open(MIGRATIONS)
    state = NamespacedState(SqliteKeyValueStore(db), "dingtalk")
    headers = signed(int(NOW * 1000) - 6_000)
    forged = message()
    forged["msgId"], forged["text"] = "msg-forged", {"content": "make me an admin"}
    async with running(state) as before:
        assert (await before.post(message(), headers))[0] == 200
    async with running(state) as after:  # a new process: its in-memory guard is empty
        assert (await after.post(forged, headers))[0] == 403
        assert (await after.post(message(), headers))[0] == 200  # DingTalk's retry of the real one still passes
        assert [m.msg_id for _, m in after.published] == ["msg-1"]
    async with running() as forgetful:  # what a guard without durable state would have let through
        assert (await forgetful.post(forged, headers))[0] == 200

    fresh = signed()  # two genuine callbacks of one millisecond, arriving together
    first, second = message(), message()
    second["msgId"] = "msg-2"
    async with running(state) as before:
        statuses = await asyncio.gather(before.post(first, fresh), before.post(second, fresh))
        assert [s for s, _ in statuses] == [200, 200]
    remembered = await state.get(f"replay:bot1\x1f{fresh['timestamp']}")
    assert remembered is not None and len(remembered.split(",")) == 2  # neither write overwrote the other
    await db.close()


class _BrokenState:
    """Durable adapter state whose storage fails (e.g. the disk is full)."""

    async def get(self, key: str) -> str | None:
        raise OSError("database or disk is full")

    async def put(self, key: str, value: str, *, ttl: float) -> None:
        raise OSError("database or disk is full")

    async def delete(self, key: str) -> None:
        raise OSError("database or disk is full")


async def test_replay_state_failure_is_a_retryable_503_and_malformed_bodies_leave_no_record(tmp_path: Path) -> None:
    async with running(_BrokenState()) as broken:  # type: ignore[arg-type]
        status, _ = await broken.post(message(), signed())
        assert status == 503 and broken.published == []  # not an unhandled 500; DingTalk may retry
    db = SqliteDatabase(tmp_path / "state.sqlite3")
    await db.open(MIGRATIONS)
    state = NamespacedState(SqliteKeyValueStore(db), "dingtalk")
    headers = signed()
    async with running(state) as h:
        assert (await h.post(b"{not json", headers))[0] == 400
    assert await state.get(f"replay:bot1\x1f{headers['timestamp']}") is None  # the 400 stored nothing
    await db.close()


def test_signature_matches_the_documented_formula() -> None:
    assert signature("1767323045000", APP_SECRET) == expected_sign("1767323045000")
    assert signature("1", "k") != signature("2", "k") != signature("1", "j")


async def test_valid_sign_is_accepted_and_published(harness: Harness) -> None:
    status, body = await harness.post(message(), signed())
    assert (status, body) == (200, {"msgtype": "empty"})
    ((bot_id, msg),) = harness.published
    assert bot_id == "bot1" and msg.msg_id == "msg-1" and msg.text is not None and msg.text.content == "hello"


async def test_a_signed_header_pair_carries_one_body_only(harness: Harness) -> None:
    headers = signed(int(NOW * 1000) - 6_000)  # captured 6 s ago: past the same-millisecond grace
    assert (await harness.post(message(), headers))[0] == 200
    assert (await harness.post(message(), headers))[0] == 200  # DingTalk's own retry: identical request
    forged = message()
    forged["text"] = {"content": "make me an admin"}
    forged["msgId"] = "msg-forged"
    assert (await harness.post(forged, headers))[0] == 403  # captured headers replayed with another body
    for space in ("\u00a0", "\u3000", "\u2009", "\u0085"):  # the same sign, "varied" by a Unicode space
        varied = {**headers, "sign": headers["sign"] + space}
        assert (await harness.post(forged, varied))[0] == 403, repr(space)
    assert [m.msg_id for _, m in harness.published] == ["msg-1", "msg-1"]  # the journal dedupes the retry


async def test_two_genuine_callbacks_in_one_millisecond_are_both_taken(harness: Harness) -> None:
    headers = signed()  # DingTalk signs only the timestamp: same-millisecond callbacks share this pair
    first, second = message(), message()
    second["msgId"], second["text"] = "msg-2", {"content": "a second message in the same ms"}
    assert (await harness.post(first, headers))[0] == 200
    assert (await harness.post(second, headers))[0] == 200
    assert (await harness.post(second, headers))[0] == 200  # and DingTalk's retry of it
    assert [m.msg_id for _, m in harness.published] == ["msg-1", "msg-2", "msg-2"]


@pytest.mark.parametrize("skew_ms", [-int(WINDOW * 1000), int(WINDOW * 1000)])
async def test_timestamps_at_the_window_edge_are_accepted(harness: Harness, skew_ms: int) -> None:
    status, _ = await harness.post(message(), signed(int(NOW * 1000) + skew_ms))
    assert status == 200 and len(harness.published) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"timestamp": str(int(NOW * 1000)), "sign": expected_sign(str(int(NOW * 1000)), "wrong-secret")},
        {"timestamp": str(int(NOW * 1000)), "sign": expected_sign(str(int(NOW * 1000) + 1))},
        {"timestamp": str(int(NOW * 1000)), "sign": ""},
        signed(int(NOW * 1000) - int(WINDOW * 1000) - 1),  # stale: a replay
        signed(int(NOW * 1000) + int(WINDOW * 1000) + 1),  # from the future
        {"timestamp": "1767323045000.0", "sign": expected_sign("1767323045000.0")},
        {"timestamp": "-1", "sign": expected_sign("-1")},
        {"timestamp": str(int(NOW * 1000))},
        {"sign": expected_sign(str(int(NOW * 1000)))},
        {},
    ],
    ids=[
        *("wrong-secret", "other-timestamp", "empty-sign", "stale", "future"),
        *("float-ts", "negative-ts", "no-sign", "no-timestamp", "no-headers"),
    ],
)
async def test_forged_stale_or_missing_headers_are_403_and_nothing_is_parsed(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, headers: dict[str, str]
) -> None:
    def must_not_parse(data: bytes) -> BotMessage:
        raise AssertionError("parsed before verification")

    monkeypatch.setattr(callback, "parse_bot_message", must_not_parse)
    status, _ = await harness.post(b"{not json", headers)
    assert status == 403 and harness.published == []
    assert "dingtalk callback rejected: 403" in caplog.text
    assert APP_SECRET not in caplog.text and "not json" not in caplog.text


async def test_oversized_bodies_are_413(harness: Harness) -> None:
    big = message(text={"content": "x" * MAX})
    status, _ = await harness.post(big, signed())
    assert status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the bounded read must catch it
        for _ in range(MAX // 1024 + 2):
            yield b" " * 1024

    async with harness.http.post(f"{harness.url}/webhooks/dingtalk/bot1", data=chunks(), headers=signed()) as resp:
        assert resp.status == 413
    assert harness.published == []


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b"",
        json.dumps(message(msgId="")).encode(),
        json.dumps(message(conversationType="9")).encode(),
    ],
)
async def test_malformed_bodies_are_400(harness: Harness, body: bytes) -> None:
    status, answer = await harness.post(body, signed())
    assert status == 400 and harness.published == []
    assert "not a DingTalk bot message" in answer["msg"]


@pytest.mark.parametrize("bot", ["nobody", "streambot"])
async def test_unknown_or_stream_only_bots_are_404(harness: Harness, bot: str) -> None:
    status, _ = await harness.post(message(), signed(), bot=bot)
    assert status == 404 and harness.published == []


async def test_busy_or_failing_runtime_answers_503(harness: Harness) -> None:
    harness.publish_error = BackpressureError("full")
    status, _ = await harness.post(message(), signed())
    assert status == 503
    harness.publish_error = RuntimeError("disk gone")
    status, _ = await harness.post(message(), signed())
    assert status == 503
    harness.publish_error = None
    harness.accepting = False
    status, _ = await harness.post(message(), signed())
    assert status == 503 and harness.published == []


def test_verify_and_parse_folds_header_case_for_plain_dicts() -> None:
    headers = {k.capitalize(): v for k, v in signed().items()}
    msg = verify_and_parse(headers, json.dumps(message()).encode(), APP_SECRET, now=NOW, window=WINDOW, max_bytes=MAX)
    assert msg.conversation_id == "cidDM=="
    with pytest.raises(CallbackRejected) as info:
        verify_and_parse(signed(), b"{}", "", now=NOW, window=WINDOW, max_bytes=MAX)
    assert info.value.status == 403  # no secret configured fails closed
