"""LLMClient that runs litellm in a child process.

A litellm call costs the caller about 5 ms of CPU even against an instant server, 20x a bare HTTP
request (bench/llm_cost.py). In the gateway's one event loop that CPU competes with acking inbound
messages, so busy turns starved ingest (bench/ingest.py). Here the gateway only writes a JSON line
and reads the answer; litellm's work runs on another core. If the child dies, calls in flight fail
as LLMUnavailable (the user gets an honest reply) and the next call starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from typing import Any

from agent_core.llm import (
    AssistantTurn,
    ChatMessage,
    LiteLLMClient,
    LLMAuthError,
    LLMBadRequest,
    LLMError,
    LLMNotConfigured,
    LLMProfile,
    LLMRateLimited,
    LLMUnavailable,
    OnText,
)

log = logging.getLogger(__name__)

_ERRORS: dict[str, type[LLMError]] = {
    cls.__name__: cls
    for cls in (LLMError, LLMNotConfigured, LLMAuthError, LLMRateLimited, LLMUnavailable, LLMBadRequest)
}
_WORKER_EXITED = "The AI model worker stopped unexpectedly; please try again."


def _to_error(payload: Mapping[str, Any]) -> LLMError:
    cls = _ERRORS.get(str(payload.get("kind")), LLMUnavailable)
    return cls(payload.get("user_message") or None, detail=str(payload.get("detail", "")))


class ProcessLLMClient:
    """Same interface as LiteLLMClient; the litellm calls happen in `agent_core.llm_worker`."""

    def __init__(
        self,
        profiles: Mapping[str, LLMProfile],
        default: str,
        env: Mapping[str, str],
        *,
        start_timeout: float = 120.0,
    ) -> None:
        self._local = LiteLLMClient(profiles, default, env)  # config checks only: never imports litellm here
        self._config = json.dumps(
            {"profiles": {n: p.model_dump(mode="json") for n, p in profiles.items()}, "default": default}
        )
        self._env = dict(env)
        self._start_timeout = start_timeout
        # No answer within every profile's whole retry budget means the worker is stuck, not slow.
        self._call_timeout = 30.0 + sum(p.timeout * (p.retries + 1) for p in profiles.values())
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._pending: dict[int, asyncio.Queue[dict[str, Any]]] = {}
        self._next_id = 0
        self._start_lock = asyncio.Lock()

    def is_configured(self) -> bool:
        return self._local.is_configured()

    def describe(self) -> str:
        return self._local.describe() + " [litellm in a worker process]"

    async def warm_up(self) -> None:
        """Start the worker (it imports litellm before saying it is ready)."""
        if self.is_configured():
            await self._ensure_started()

    async def close(self) -> None:
        """Stop the worker: closing its stdin makes it finish in-flight calls and exit."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._relays:  # they end at the worker's EOF; a stuck one is cancelled
            _, stuck = await asyncio.wait(self._relays, timeout=2)
            for task in stuck:
                task.cancel()

    async def _ensure_started(self) -> asyncio.subprocess.Process:
        async with self._start_lock:
            if self._proc is not None and self._proc.returncode is None:
                return self._proc
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent_core.llm_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env,
                limit=32 * 1024 * 1024,
            )
            relay = asyncio.create_task(_relay_stderr(proc), name="llm-worker-stderr")
            self._relays.add(relay)
            relay.add_done_callback(self._relays.discard)
            try:
                await self._handshake(proc)
            except BaseException:  # timeout, a bad answer, or cancelled during start-up: never leave it running
                await _kill(proc)
                raise
            self._proc = proc
            self._reader = asyncio.create_task(self._read(proc), name="llm-worker-reader")
            log.info("LLM worker process %s ready", proc.pid)
            return proc

    async def _handshake(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._config.encode() + b"\n")
        await proc.stdin.drain()
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), self._start_timeout)
        except TimeoutError:
            raise LLMUnavailable(_WORKER_EXITED, detail="LLM worker did not start in time") from None
        try:
            ok = bool(ready) and json.loads(ready).get("ready") is True
        except ValueError:
            ok = False
        if not ok:
            raise LLMUnavailable(_WORKER_EXITED, detail="LLM worker failed to start (see its stderr)")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        broken = False
        try:
            while line := await proc.stdout.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    log.error("LLM worker broke the protocol; restarting it")
                    broken = True
                    break
                queue = self._pending.get(message.get("id", -1))
                if queue is not None:
                    queue.put_nowait(message)
        finally:
            if self._proc is proc:
                self._proc = None
            if broken and proc.returncode is None:
                proc.kill()
            exited = {"error": {"kind": "LLMUnavailable", "user_message": _WORKER_EXITED, "detail": "worker exited"}}
            for queue in self._pending.values():
                queue.put_nowait(exited)

    async def _request(
        self,
        op: str,
        messages: Sequence[ChatMessage],
        max_tokens: int | None,
        tools: Sequence[Mapping[str, Any]] = (),
    ) -> AsyncGenerator[Any, None]:
        proc = await self._ensure_started()
        self._next_id += 1
        rid = self._next_id
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[rid] = queue
        finished = False
        try:
            line = {
                "id": rid,
                "op": op,
                "messages": [m.model_dump(mode="json") for m in messages],
                "max_tokens": max_tokens,
                "tools": list(tools),
            }
            assert proc.stdin is not None
            try:
                proc.stdin.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
                await proc.stdin.drain()  # a stuck worker pushes back instead of growing our buffer
            except ConnectionError:
                raise LLMUnavailable(_WORKER_EXITED, detail="LLM worker pipe closed") from None
            while True:
                try:
                    async with asyncio.timeout(self._call_timeout):
                        message = await queue.get()
                except TimeoutError:
                    raise LLMUnavailable(detail="no answer from the LLM worker in time") from None
                if "error" in message:
                    finished = True
                    raise _to_error(message["error"])
                if "delta" in message:
                    yield message["delta"]
                    continue
                finished = True
                if "turn" in message:
                    yield message["turn"]
                    return
                yield message.get("text", "")
                return
        finally:
            del self._pending[rid]
            if not finished:  # cancelled, timed out or abandoned: the worker aborts the call
                self._cancel(proc, rid)

    @staticmethod
    def _cancel(proc: asyncio.subprocess.Process, rid: int) -> None:
        if proc.returncode is None and proc.stdin is not None and not proc.stdin.is_closing():
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(json.dumps({"op": "cancel", "target": rid}).encode() + b"\n")

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int | None = None) -> str:
        if not self.is_configured():
            return await self._local.complete(messages, max_tokens=max_tokens)  # raises LLMNotConfigured
        async with contextlib.aclosing(self._request("complete", messages, max_tokens)) as replies:
            async for text in replies:
                return str(text)
        raise LLMUnavailable(_WORKER_EXITED)

    async def complete_tools(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        on_text: OnText | None = None,
    ) -> AssistantTurn:
        if not self.is_configured():
            return await self._local.complete_tools(messages, tools, max_tokens=max_tokens, on_text=on_text)
        op = "complete_tools" if on_text is None else "stream_tools"
        async with contextlib.aclosing(self._request(op, messages, max_tokens, tools)) as replies:
            async for item in replies:
                if isinstance(item, str):
                    if on_text is not None and item:
                        await on_text(item)
                    continue
                return AssistantTurn.model_validate(item)
        raise LLMUnavailable(_WORKER_EXITED)

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        if not self.is_configured():
            async for delta in self._local.stream(messages):  # raises LLMNotConfigured
                yield delta
            return
        async with contextlib.aclosing(self._request("stream", messages, None)) as replies:
            async for text in replies:
                if text:
                    yield str(text)

    async def ping(self) -> str:
        if not self.is_configured():
            return await self._local.ping()
        async with contextlib.aclosing(self._request("ping", [], None)) as replies:
            async for text in replies:
                return str(text)
        raise LLMUnavailable(_WORKER_EXITED)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill and reap a worker (shielded: it must finish even while we are being cancelled)."""
    if proc.returncode is None:
        proc.kill()
    await asyncio.shield(proc.wait())


async def _relay_stderr(proc: asyncio.subprocess.Process) -> None:
    """Worker diagnostics go through our logging, so they get its redaction, JSON format and level."""
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        text = line.decode("utf-8", errors="replace").rstrip()
        if text:
            log.warning("llm worker %s: %s", proc.pid, text)
