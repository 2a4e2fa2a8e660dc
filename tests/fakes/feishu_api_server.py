"""Threaded aiohttp server base for the Feishu API fake: lifecycle, recording, failure / delay injection.

The server runs on 127.0.0.1:<port> in its own thread and event loop, so it keeps answering while the
test's thread or loop is blocked (lark-oapi does blocking HTTP). Subclasses implement `_route`.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web

from tests.fakes.feishu_api_model import ApiError, RecordedRequest
from tests.fakes.feishu_api_state import Call, Reply, error_reply
from tests.fakes.threaded import ThreadedServer

__all__ = ["ThreadedFake", "ThreadedServer"]

T = TypeVar("T")


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    method: str | None
    times: int
    code: int | None = None
    msg: str = "injected failure"
    http_status: int = 500
    headers: Mapping[str, str] | None = None
    seconds: float = 0.0
    deliver: bool = False  # fail: process first (side effects happen), then answer the error

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.pattern.search(path) is not None


class ThreadedFake(ThreadedServer):
    """Catch-all HTTP server on its own thread (`ThreadedServer`); every request is recorded, then routed via
    `_route`; `base_url` is lark-oapi's `domain` (plain http is allowed for loopback only)."""

    thread_name = "fake-http-api"

    def __init__(self, *, port: int = 0) -> None:
        super().__init__(port=port)
        self._cond = threading.Condition()
        self._fails: list[_Rule] = []
        self._delays: list[_Rule] = []
        self._requests: list[RecordedRequest] = []

    def now(self) -> float:
        return time.monotonic()

    def _route(self, call: Call) -> Reply:
        raise NotImplementedError

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # ---- failure injection -----------------------------------------------------------------------------------

    def fail_next(
        self,
        path_pattern: str,
        code: int | None = None,
        msg: str = "injected failure",
        *,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        method: str | None = None,
        deliver: bool = False,
    ) -> None:
        """Answer the next `times` requests whose path matches the regex with an error.

        code=None gives a bare HTTP error (default 500, text body); with a code the body is {"code","msg"}
        (default HTTP 400). deliver=True processes the request first (e.g. the message IS sent) and only the
        answer fails - the ambiguous case exactly-once senders must survive.
        """
        status = http_status if http_status is not None else (500 if code is None else 400)
        rule = _Rule(re.compile(path_pattern), method, times, code, msg, status, headers, deliver=deliver)
        with self._cond:
            self._fails.append(rule)

    def rate_limit_next(self, path_pattern: str, *, reset: int = 1, limit: int = 50, times: int = 1) -> None:
        """The next matching requests get the gateway's 429 + 99991400 with x-ogw-ratelimit-* headers."""
        headers = {"x-ogw-ratelimit-limit": str(limit), "x-ogw-ratelimit-reset": str(reset)}
        self.fail_next(
            path_pattern, 99991400, "request trigger frequency limit", http_status=429, headers=headers, times=times
        )

    def delay_next(self, path_pattern: str, seconds: float, *, times: int = 1, method: str | None = None) -> None:
        """Sleep `seconds` (real time) before handling the next matching requests."""
        with self._cond:
            self._delays.append(_Rule(re.compile(path_pattern), method, times, seconds=seconds))

    def clear(self) -> None:
        """Forget recorded requests."""
        with self._cond:
            self._requests.clear()

    # ---- recorded requests and waiting ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def requests_to(self, path_pattern: str, method: str | None = None) -> list[RecordedRequest]:
        pattern = re.compile(path_pattern)
        return [r for r in self.requests if pattern.search(r.path) and method in (None, r.method)]

    def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0) -> T:
        """Block until predicate() is truthy (re-checked after every request and every 50 ms); return it."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not met in time")
            with self._cond:
                self._cond.wait(min(remaining, 0.05))
        return result

    async def async_wait_for(self, predicate: Callable[[], T | None], seconds: float = 10.0) -> T:
        """`wait_for` for async tests (polls; does not block the caller's loop)."""
        deadline = time.monotonic() + seconds
        while not (result := predicate()):
            if time.monotonic() >= deadline:
                raise TimeoutError("condition not met in time")
            await asyncio.sleep(0.01)
        return result

    # ---- HTTP plumbing ---------------------------------------------------------------------------------------

    def _pop_rule(self, rules: list[_Rule], method: str, path: str) -> _Rule | None:
        for rule in rules:
            if rule.matches(method, path):
                rule.times -= 1
                if rule.times <= 0:
                    rules.remove(rule)
                return rule
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        method, path = request.method, request.path
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._cond:
            rec = RecordedRequest(method, path, dict(request.query), headers, body, raw, self.now())
            self._requests.append(rec)
            fail_rule = self._pop_rule(self._fails, method, path)
            delay = self._pop_rule(self._delays, method, path)
        if delay is not None:
            await asyncio.sleep(delay.seconds)
        reply: Reply | None = None
        if fail_rule is None or fail_rule.deliver:
            with self._cond:
                call = Call(method, path, rec.query, headers, body, raw, {}, self.now(), rec)
                try:
                    reply = self._route(call)
                except ApiError as exc:
                    reply = error_reply(exc)
                self._cond.notify_all()
        if fail_rule is not None:
            rec.injected = True
            reply = _injected(fail_rule)
        assert reply is not None
        rec.status, rec.response = reply.status, reply.json
        if reply.json is not None:
            text = json.dumps(reply.json, ensure_ascii=False)
            return web.Response(
                status=reply.status, text=text, content_type="application/json", charset="utf-8", headers=reply.headers
            )
        return web.Response(
            status=reply.status, body=reply.data, content_type=reply.content_type, headers=reply.headers
        )


def _injected(rule: _Rule) -> Reply:
    headers = dict(rule.headers or {})
    if rule.code is None:
        return Reply(
            status=rule.http_status,
            data=f"{rule.http_status} {rule.msg}".encode(),
            headers=headers,
            content_type="text/plain",
        )
    return Reply(status=rule.http_status, json={"code": rule.code, "msg": rule.msg}, headers=headers)
