"""The other side of the webhook adapter, for tests, the crash test and the ingest benchmark.

`CallbackReceiver` plays the internal system that receives replies: a real aiohttp server on
127.0.0.1 in its own thread and event loop (so it keeps answering while the test's loop is busy or
blocked, and survives gateway process restarts). It checks every callback's signature, records
deliveries thread-safely, and can be scripted to fail or stall. Like real platforms it treats the
Idempotency-Key as the identity of a message: `visible()` shows the first delivery per key, while
`deliveries` keeps resends so exactly-once tests can see them.

`send_signed` / `make_payload` play the internal system that sends messages to the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from adapters.webhook.signing import SignatureError, signed_headers, verify
from tests.fakes.threaded import ThreadedServer

CALLBACK_PATH = "/callback"


@dataclass(frozen=True)
class Delivery:
    """One callback request that passed the signature check (whatever status it was answered with)."""

    idempotency_key: str
    body: dict[str, Any]
    raw: bytes
    headers: dict[str, str]
    received_at: float
    status: int


@dataclass(frozen=True)
class Reply:
    """How to answer one request: status, extra headers, and a delay before answering."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: str = ""


# A policy sees (idempotency_key, parsed body) and returns a Reply, or None for the default 200.
Policy = Callable[[str, dict[str, Any]], Reply | None]


class CallbackReceiver(ThreadedServer):
    """A signature-checking callback endpoint on 127.0.0.1:<free port>, served from a private thread.

    `secret` is one bot's secret, or a mapping bot_id -> secret (chosen by the body's `bot_id`).
    Requests with a bad signature are answered 401 and recorded in `bad` only. Every correctly
    signed request is recorded in `attempts`; those answered 2xx are also in `deliveries`.
    A delivery is recorded when the request arrives, before any scripted delay, which models the
    hard case "the platform got it but the ack was lost".
    """

    thread_name = "callback-receiver"

    def __init__(
        self,
        secret: bytes | Mapping[str, bytes],
        *,
        window: float = 300.0,
        policy: Policy | None = None,
    ) -> None:
        super().__init__()
        self._secret = secret
        self._window = window
        self._policy = policy
        self._cond = threading.Condition()
        self._attempts: list[Delivery] = []
        self._deliveries: list[Delivery] = []
        self._bad: list[tuple[str, bytes]] = []
        self._script: deque[Reply] = deque()
        self._stopping: asyncio.Event | None = None
        self.url = ""

    # ---- lifecycle (ThreadedServer runs it) ---------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CALLBACK_PATH, self._handle)
        return app

    async def _boot(self) -> None:
        self._stopping = asyncio.Event()
        await super()._boot()
        self.url = f"{self.base_url}{CALLBACK_PATH}"

    async def _shutdown(self) -> None:
        if self._stopping is not None:  # pending scripted delays are cut short
            self._stopping.set()
        await super()._shutdown()

    # ---- scripting -------------------------------------------------------------------------

    def fail_next(self, n: int, status: int, headers: Mapping[str, str] | None = None, body: str = "") -> None:
        """Answer the next `n` correctly signed requests with `status` (recorded as attempts only)."""
        with self._cond:
            self._script.extend(Reply(status=status, headers=dict(headers or {}), body=body) for _ in range(n))

    def delay_next(self, n: int, seconds: float) -> None:
        """Answer the next `n` correctly signed requests with 200, but only after `seconds`."""
        with self._cond:
            self._script.extend(Reply(delay=seconds) for _ in range(n))

    def set_policy(self, policy: Policy | None) -> None:
        """Decide replies with `policy` once the scripted ones are used up."""
        with self._cond:
            self._policy = policy

    # ---- observations ----------------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every request answered 2xx, in arrival order, resends included."""
        with self._cond:
            return list(self._deliveries)

    @property
    def attempts(self) -> list[Delivery]:
        """Every correctly signed request, whatever it was answered."""
        with self._cond:
            return list(self._attempts)

    @property
    def bad(self) -> list[tuple[str, bytes]]:
        """(reason, raw body) of every request whose signature did not verify."""
        with self._cond:
            return list(self._bad)

    def visible(self) -> list[Delivery]:
        """What a user would see: the first 2xx delivery per idempotency key, in arrival order."""
        with self._cond:
            return _first_per_key(self._deliveries)

    def wait_visible(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until at least `count` distinct keys were delivered; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(_first_per_key(self._deliveries)) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = len(_first_per_key(self._deliveries))
                    raise TimeoutError(f"only {seen} of {count} callbacks arrived")
                self._cond.wait(remaining)
            return _first_per_key(self._deliveries)

    async def async_wait_visible(self, count: int, seconds: float = 10.0) -> list[Delivery]:
        """`wait_visible` for async tests: polls without blocking the caller's event loop."""
        deadline = time.monotonic() + seconds
        while True:
            visible = self.visible()
            if len(visible) >= count:
                return visible
            if time.monotonic() >= deadline:
                raise TimeoutError(f"only {len(visible)} of {count} callbacks arrived")
            await asyncio.sleep(0.01)

    # ---- server side -----------------------------------------------------------------------

    def _secret_for(self, body: Any) -> bytes | None:
        if isinstance(self._secret, bytes):
            return self._secret
        bot_id = body.get("bot_id") if isinstance(body, dict) else None
        return self._secret.get(bot_id) if isinstance(bot_id, str) else None

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        secret = self._secret_for(body)
        try:
            if secret is None:
                raise SignatureError("no secret for this bot")
            verify(secret, request.headers, raw, time.time(), self._window)
            if not isinstance(body, dict):
                raise SignatureError("body is not a JSON object")
        except SignatureError as exc:
            with self._cond:
                self._bad.append((exc.reason, raw))
                self._cond.notify_all()
            return web.json_response({"error": exc.reason}, status=401)

        key = request.headers.get("Idempotency-Key", "")
        with self._cond:
            reply = self._script.popleft() if self._script else None
            policy = self._policy
        if reply is None and policy is not None:
            reply = policy(key, body)
        reply = reply or Reply()

        delivery = Delivery(
            idempotency_key=key,
            body=body,
            raw=raw,
            headers=dict(request.headers),
            received_at=time.time(),
            status=reply.status,
        )
        with self._cond:
            self._attempts.append(delivery)
            if 200 <= reply.status < 300:
                self._deliveries.append(delivery)
            self._cond.notify_all()

        if reply.delay > 0 and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), reply.delay)
        text = reply.body or json.dumps({"ok": 200 <= reply.status < 300, "message_id": f"cb-{key}"})
        return web.Response(
            status=reply.status, text=text, content_type="application/json", headers=dict(reply.headers)
        )


def _first_per_key(deliveries: list[Delivery]) -> list[Delivery]:
    seen: set[str] = set()
    first: list[Delivery] = []
    for d in deliveries:
        if d.idempotency_key not in seen:
            seen.add(d.idempotency_key)
            first.append(d)
    return first


def make_payload(message_id: str, chat_id: str, user_id: str, text: str, chat_type: str = "direct") -> dict[str, Any]:
    """A valid inbound webhook body."""
    return {
        "message_id": message_id,
        "chat_id": chat_id,
        "chat_type": chat_type,
        "sender": {"id": user_id, "name": f"user {user_id}"},
        "text": text,
    }


async def send_signed(
    session: aiohttp.ClientSession,
    url: str,
    secret: bytes,
    payload: dict[str, Any] | bytes,
    *,
    timestamp: float | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST `payload` (a dict is JSON-encoded, bytes are sent as-is) signed with `secret`.

    Returns (status, JSON response object); a non-object or non-JSON response comes back as {"raw": text}.
    """
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
    headers = signed_headers(secret, body, time.time() if timestamp is None else timestamp)
    headers["Content-Type"] = "application/json"
    async with session.post(url, data=body, headers=headers) as resp:
        text = await resp.text()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        return resp.status, data if isinstance(data, dict) else {"raw": text}
