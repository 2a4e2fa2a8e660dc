"""A scriptable fake OpenAI-compatible server for tests and benchmarks.

The server runs on 127.0.0.1 in its own thread with its own event loop, so it
keeps answering while the test's thread or loop is blocked.  Replies are taken
from a queue filled with :meth:`FakeLLM.enqueue`; when the queue is empty the
``default`` behaviour answers (``"echo"``: ``"echo: <last user message>"``), so
concurrent callers get deterministic replies derived from their own request.

    with FakeLLM() as llm:
        llm.enqueue("hello")
        llm.enqueue(ErrorReply(429, headers={"retry-after": "0"}))
        ... point a client at llm.base_url ...
        assert llm.requests[0].body["messages"][-1]["content"] == "hi"

Run standalone (echo default, serves until SIGTERM / Ctrl-C):

    python -m tests.fakes.fake_llm --port 8099 --latency 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal, TypeAlias

from aiohttp import web

from tests.fakes.threaded import ThreadedServer

__all__ = [
    "DelayReply",
    "DropReply",
    "ErrorReply",
    "FakeLLM",
    "RecordedRequest",
    "Reply",
    "ToolCallReply",
    "TruncatedStreamReply",
]


@dataclass(frozen=True)
class ToolCallReply:
    """The assistant asks to call tool ``name`` with ``arguments`` (finish_reason "tool_calls")."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    call_id: str = "call_1"
    content: str | None = None


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error. ``body=None`` produces an OpenAI-style ``{"error": {...}}`` body."""

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DelayReply:
    """Sleep ``seconds``, then answer with ``then`` (None: the default behaviour)."""

    seconds: float
    then: Reply | None = None


@dataclass(frozen=True)
class DropReply:
    """Close the connection without sending any response."""


@dataclass(frozen=True)
class TruncatedStreamReply:
    """Streaming only: send the first deltas of ``text``, then cut the connection (no finish, no [DONE])."""

    text: str


Reply: TypeAlias = str | ToolCallReply | ErrorReply | DelayReply | DropReply | TruncatedStreamReply
DefaultBehaviour: TypeAlias = Literal["echo"] | Callable[[Mapping[str, Any]], Reply]


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    body: dict[str, Any]
    authorization: str | None
    headers: dict[str, str]
    received_at: float

    @property
    def messages(self) -> list[dict[str, Any]]:
        msgs = self.body.get("messages", [])
        return list(msgs) if isinstance(msgs, list) else []


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def echo_reply(body: Mapping[str, Any]) -> Reply:
    """``"echo: <content of the last user message>"``."""
    messages = body.get("messages") or []
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return f"echo: {_text_of(msg.get('content'))}"
    return "echo: "


def split_chunks(text: str, size: int = 4) -> list[str]:
    """Split text into deltas of at most ``size`` characters (always at least one piece)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit-ish vector derived from sha256 of the text."""
    out: list[float] = []
    counter = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((b - 127.5) / 127.5 for b in digest)
        counter += 1
    vec = out[:dims]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vec]


class FakeLLM(ThreadedServer):
    """Fake OpenAI-compatible server: /v1/chat/completions, /v1/embeddings, /v1/models."""

    thread_name = "fake-llm"
    ready_timeout = None

    def __init__(
        self,
        *,
        default: DefaultBehaviour = "echo",
        latency: float = 0.0,
        port: int = 0,
        model: str = "fake-model",
        stream_chunk_chars: int = 4,
        max_recorded: int | None = None,
    ) -> None:
        super().__init__(port=port)
        self.default: DefaultBehaviour = default
        self.model = model
        self.stream_chunk_chars = stream_chunk_chars
        self.stream_chunk_delay = 0.0  # seconds between streamed chunks
        self._latency = latency
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque[Reply] = collections.deque()
        self._requests: collections.deque[RecordedRequest] = collections.deque(maxlen=max_recorded)
        self._total_requests = 0
        self.abandoned_requests = 0  # delayed requests whose client hung up before the answer

    # ---------------------------------------------------------------- lifecycle
    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        return app

    def stop(self) -> None:
        super().stop()
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ access
    @property
    def base_url(self) -> str:
        return f"{super().base_url}/v1"

    @property
    def latency(self) -> float:
        with self._lock:
            return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        with self._lock:
            self._latency = value

    def enqueue(self, *replies: Reply) -> None:
        """Script the next replies (FIFO); each answers exactly one request."""
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def total_requests(self) -> int:
        with self._lock:
            return self._total_requests

    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def clear(self) -> None:
        """Forget recorded requests and scripted replies."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._total_requests = 0

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> list[RecordedRequest]:
        """Block until at least ``n`` requests arrived (since start/clear); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._total_requests < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"only {self._total_requests} of {n} requests arrived")
                self._cond.wait(remaining)
            return list(self._requests)

    # ---------------------------------------------------------------- handlers
    async def _record(self, request: web.Request) -> tuple[dict[str, Any], Reply | None, float]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = {}
        if not isinstance(body, dict):
            body = {"_raw": body}
        rec = RecordedRequest(
            path=request.path,
            body=body,
            authorization=request.headers.get("Authorization"),
            headers=dict(request.headers),
            received_at=time.time(),
        )
        with self._cond:
            self._requests.append(rec)
            self._total_requests += 1
            scripted = self._queue.popleft() if self._queue else None
            latency = self._latency
            self._cond.notify_all()
        return body, scripted, latency

    def _default_reply(self, body: Mapping[str, Any]) -> Reply:
        behaviour = self.default
        if behaviour == "echo":
            return echo_reply(body)
        if callable(behaviour):
            return behaviour(body)
        raise ValueError(f"unknown default behaviour {behaviour!r}")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, reply, latency = await self._record(request)
        if latency > 0:
            await asyncio.sleep(latency)
        if reply is None:
            reply = self._default_reply(body)
        while isinstance(reply, DelayReply):
            await asyncio.sleep(reply.seconds)
            reply = reply.then if reply.then is not None else self._default_reply(body)
            if request.transport is None or request.transport.is_closing():
                with self._lock:
                    self.abandoned_requests += 1
                return web.Response(status=499)  # never sent: the client is gone
        if isinstance(reply, ErrorReply):
            return _error_response(reply)
        if isinstance(reply, DropReply):
            _drop(request)
            return web.Response(status=500)  # never sent: the transport is closed
        model = str(body.get("model") or self.model)
        if body.get("stream"):
            return await self._stream(request, body, model, reply)
        if isinstance(reply, TruncatedStreamReply):
            return _error_response(ErrorReply(400, "TruncatedStreamReply needs stream=true"))
        return web.json_response(_completion(model, reply, body))

    async def _stream(
        self, request: web.Request, body: Mapping[str, Any], model: str, reply: Reply
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(obj)}\n\n".encode()

        if isinstance(reply, ToolCallReply):
            call = _tool_call(reply)
            call["index"] = 0
            await resp.write(chunk({"role": "assistant", "content": reply.content, "tool_calls": [call]}, None))
            await resp.write(chunk({}, "tool_calls"))
            text = reply.content or ""
        else:
            assert isinstance(reply, str | TruncatedStreamReply)
            text = reply if isinstance(reply, str) else reply.text
            pieces = split_chunks(text, self.stream_chunk_chars)
            if isinstance(reply, TruncatedStreamReply):
                pieces = pieces[: max(1, len(pieces) // 2)]
            for i, piece in enumerate(pieces):
                delta: dict[str, Any] = {"content": piece}
                if i == 0:
                    delta = {"role": "assistant", "content": piece}
                await resp.write(chunk(delta, None))
                if self.stream_chunk_delay:
                    await asyncio.sleep(self.stream_chunk_delay)  # a model that takes its time
            if isinstance(reply, TruncatedStreamReply):
                await asyncio.sleep(0.05)  # let the deltas reach the client first
                _drop(request)
                return resp
            await resp.write(chunk({}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            usage = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            usage |= {"choices": [], "usage": _usage(body, text)}
            await resp.write(f"data: {json.dumps(usage)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, reply, latency = await self._record(request)
        if latency > 0:
            await asyncio.sleep(latency)
        while isinstance(reply, DelayReply):
            await asyncio.sleep(reply.seconds)
            reply = reply.then
        if isinstance(reply, ErrorReply):
            return _error_response(reply)
        raw = body.get("input", [])
        inputs = raw if isinstance(raw, list) else [raw]
        dims = int(body.get("dimensions") or 16)
        data = [
            {"object": "embedding", "index": i, "embedding": _embedding(str(text), dims)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(str(t).split()) for t in inputs)
        return web.json_response(
            {
                "object": "list",
                "model": str(body.get("model") or self.model),
                "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_exceeded",
}


def _error_response(reply: ErrorReply) -> web.Response:
    body: dict[str, Any] | str
    if reply.body is None:
        body = {
            "error": {
                "message": f"fake error {reply.status}",
                "type": _ERROR_TYPES.get(reply.status, "server_error"),
                "param": None,
                "code": None,
            }
        }
    elif isinstance(reply.body, str):
        body = {"error": {"message": reply.body, "type": _ERROR_TYPES.get(reply.status, "server_error")}}
    else:
        body = reply.body
    return web.json_response(body, status=reply.status, headers=reply.headers)


def _tool_call(reply: ToolCallReply) -> dict[str, Any]:
    return {
        "id": reply.call_id,
        "type": "function",
        "function": {"name": reply.name, "arguments": json.dumps(reply.arguments)},
    }


def _usage(body: Mapping[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(_text_of(m.get("content")).split()) for m in body.get("messages") or [] if isinstance(m, dict))
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(model: str, reply: Reply, body: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(reply, ToolCallReply):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.content,
            "tool_calls": [_tool_call(reply)],
        }
        finish, text = "tool_calls", reply.content or ""
    else:
        assert isinstance(reply, str)
        message = {"role": "assistant", "content": reply}
        finish, text = "stop", reply
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": _usage(body, text),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server (echo replies).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    args = parser.parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with FakeLLM(port=args.port, latency=args.latency, max_recorded=0) as llm:
        print(f"fake LLM listening on {llm.base_url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
