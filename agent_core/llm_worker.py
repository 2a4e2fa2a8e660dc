"""Child process that runs litellm for the gateway (see llm_process.py).

Protocol: JSON lines. Parent -> child: one config line {"profiles", "default"}, then requests
{"id", "op": "complete"|"stream"|"ping"|..., "messages", "max_tokens"}, and {"op": "cancel", "target": id}
when the parent gave up on a request (its HTTP call is then aborted). Child -> parent: {"ready": true}
once litellm is imported, then {"id", "delta"} / {"id", "text"} / {"id", "error": {...}} per request.
The child exits when its stdin closes, so it never outlives the gateway (even after kill -9).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import IO, Any

from agent_core.llm import ChatMessage, LiteLLMClient, LLMError, LLMProfile

MAX_LINE = 32 * 1024 * 1024


class _Redact(logging.Filter):
    """Keys must never reach the log, even through litellm's own messages."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:  # tracebacks can quote a key too: fold them into the redacted text
            text += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, None
        for secret in self._secrets:
            text = text.replace(secret, "***")
        record.msg, record.args = text, ()
        return True


def _error_payload(err: LLMError) -> dict[str, Any]:
    return {"kind": type(err).__name__, "user_message": err.user_message, "detail": err.detail}


class Worker:
    """Serves requests concurrently; one writer so response lines never interleave."""

    def __init__(self, client: LiteLLMClient, out: IO[bytes]) -> None:
        self._client = client
        self._out = out
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_id: dict[Any, asyncio.Task[None]] = {}

    def send(self, payload: dict[str, Any]) -> None:
        try:
            self._out.write(json.dumps(payload, ensure_ascii=False).encode() + b"\n")
            self._out.flush()
        except (BrokenPipeError, ConnectionResetError):
            os._exit(0)  # the gateway is gone (e.g. kill -9): nobody is waiting for this answer

    def handle(self, request: dict[str, Any]) -> None:
        if request.get("op") == "cancel":  # the turn timed out or was cancelled: stop paying for the call
            target = self._by_id.get(request.get("target"))
            if target is not None:
                target.cancel()
            return
        rid = request.get("id")
        task = asyncio.create_task(self._serve(request))
        self._tasks.add(task)
        self._by_id[rid] = task

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if self._by_id.get(rid) is t:
                del self._by_id[rid]

        task.add_done_callback(done)

    async def _serve(self, request: dict[str, Any]) -> None:
        rid = request.get("id")
        try:
            messages = [ChatMessage.model_validate(m) for m in request.get("messages", [])]
            op = request.get("op")
            if op == "stream":
                async for delta in self._client.stream(messages):
                    self.send({"id": rid, "delta": delta})
                self.send({"id": rid, "text": ""})
            elif op == "ping":
                self.send({"id": rid, "text": await self._client.ping()})
            elif op in ("complete_tools", "stream_tools"):

                async def forward(delta: str) -> None:
                    self.send({"id": rid, "delta": delta})

                turn = await self._client.complete_tools(
                    messages,
                    request.get("tools", []),
                    max_tokens=request.get("max_tokens"),
                    on_text=forward if op == "stream_tools" else None,
                )
                self.send({"id": rid, "turn": turn.model_dump(mode="json")})
            elif op == "complete":
                text = await self._client.complete(messages, max_tokens=request.get("max_tokens"))
                self.send({"id": rid, "text": text})
            else:
                raise ValueError(f"unknown op {op!r}")
        except asyncio.CancelledError:
            return  # cancelled on the parent's request: nobody waits for an answer
        except LLMError as err:
            self.send({"id": rid, "error": _error_payload(err)})
        except Exception as exc:  # reported to the waiting turn instead of hanging it
            self.send({"id": rid, "error": {"kind": "LLMUnavailable", "user_message": "", "detail": repr(exc)}})

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def serve(stdin: asyncio.StreamReader, out: IO[bytes]) -> None:
    """Read the config, warm up, then answer requests until stdin closes."""
    config = json.loads(await stdin.readline())
    profiles = {name: LLMProfile.model_validate(p) for name, p in config["profiles"].items()}
    client = LiteLLMClient(profiles, config["default"], os.environ)
    secrets = [os.environ.get(p.api_key_env, "").strip() for p in profiles.values() if p.api_key_env]
    for path in (p.api_key_file for p in profiles.values() if p.api_key_file):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            secrets.append(path.read_text(encoding="utf-8").strip())
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Redact(secrets))
    await client.warm_up()
    worker = Worker(client, out)
    worker.send({"ready": True})
    while line := await stdin.readline():
        try:
            request = json.loads(line)
        except ValueError:
            logging.getLogger(__name__).error("ignoring a request line that is not JSON")
            continue
        if isinstance(request, dict):
            worker.handle(request)
    await worker.drain()


async def _main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol stream
    await serve(reader, protocol_out)


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s llm-worker %(name)s %(message)s"
    )
    asyncio.run(_main())
