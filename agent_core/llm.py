"""LLM access through litellm (imported lazily, offline-safe) behind a small typed interface.

Failures become ``LLMError``s with a chat-safe ``user_message``; API keys never appear in errors or describe().
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from agent_core.llm_tools import assistant_turn, merge_call
from agent_core.llm_types import AssistantTurn as AssistantTurn
from agent_core.llm_types import ChatMessage as ChatMessage
from agent_core.llm_types import OnText as OnText
from agent_core.llm_types import ToolCall as ToolCall


class LLMProfile(BaseModel, extra="forbid"):
    model: str = Field(pattern=r"^[^/\s]+/\S+$", description='"provider/model", e.g. "openai/gpt-4o-mini"')
    api_base: str | None = None
    api_key_env: str | None = None  # NAME of the env var holding the key
    api_key_file: Path | None = None
    timeout: float = Field(default=60.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    fallback: str | None = None  # another profile, tried on transient failures
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)


class LLMError(Exception):
    """Base LLM failure. ``user_message`` is safe to show in chat; ``detail`` is for the operator's log."""

    transient = False
    default_message = "The AI model failed to answer; please try again later."

    def __init__(self, user_message: str | None = None, *, detail: str = "") -> None:
        self.user_message = user_message or self.default_message
        self.detail = detail
        super().__init__(self.user_message)

    def __str__(self) -> str:
        return f"{self.user_message} [{self.detail}]" if self.detail else self.user_message


class LLMNotConfigured(LLMError):
    default_message = "The AI model is not configured yet; the operator should run `switchboard doctor`."


class LLMAuthError(LLMError):
    default_message = "The AI service rejected our credentials; the operator needs to check the API key."


class LLMRateLimited(LLMError):
    transient = True
    default_message = "The AI service is busy right now (rate limited); please try again in a minute."


class LLMUnavailable(LLMError):
    transient = True
    default_message = "The AI service cannot be reached right now; please try again in a few minutes."


class LLMBadRequest(LLMError):
    default_message = "The AI service could not process this request."


_TOO_LONG = "This conversation is too long for the model; please start a new one or send a shorter message."
_TIMED_OUT = "The AI service took too long to answer; please try again."
_NO_MODEL = "The configured AI model does not exist at the provider; the operator needs to check its name."

# (litellm exception class names, HTTP statuses) -> (LLMError type, user message); the first match wins.
# Auth comes before BadRequestError: litellm reports a 401 during streaming as a BadRequestError.
_DOWN = ("APIConnectionError", "ServiceUnavailableError", "InternalServerError", "BadGatewayError")
_RULES: tuple[tuple[tuple[str, ...], range | tuple[int, ...], type[LLMError], str | None], ...] = (
    (("ContextWindowExceededError",), (), LLMBadRequest, _TOO_LONG),
    (("AuthenticationError", "PermissionDeniedError"), (401, 403), LLMAuthError, None),
    (("RateLimitError",), (429,), LLMRateLimited, None),
    (("Timeout",), (408,), LLMUnavailable, _TIMED_OUT),
    (_DOWN, range(500, 600), LLMUnavailable, None),
    (("NotFoundError",), (404,), LLMBadRequest, _NO_MODEL),
    (("BadRequestError", "UnprocessableEntityError"), range(400, 500), LLMBadRequest, None),
)


def _map_error(exc: BaseException) -> LLMError:
    """The one place where litellm (and transport) exceptions become LLMError types."""
    if isinstance(exc, LLMError):
        return exc
    status = getattr(exc, "status_code", None)
    head = type(exc).__name__ + (f" {status}" if isinstance(status, int) else "")
    detail = f"{head}: {' '.join(str(exc).split())[:300]}"
    if isinstance(exc, OSError):  # includes TimeoutError and ConnectionError
        return LLMUnavailable(_TIMED_OUT if isinstance(exc, TimeoutError) else None, detail=detail)
    lib = sys.modules.get("litellm")  # if litellm was never imported, exc cannot be one of its classes
    for names, statuses, kind, message in _RULES:
        classes = tuple(c for c in (getattr(lib, n, None) for n in names) if isinstance(c, type))
        if isinstance(exc, classes) or status in statuses:
            return kind(message, detail=detail)
    return LLMError(detail=detail)


def prepare_litellm_env(env: MutableMapping[str, str]) -> None:
    """Offline-safe litellm settings; call before importing litellm (explicit values win)."""
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no cost-map download at import
    env.setdefault("LITELLM_MODE", "PRODUCTION")  # no load_dotenv() of the CWD's .env at import
    env.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")  # no remote beta-header config
    env.setdefault("LITELLM_LOCAL_BLOG_POSTS", "True")


class LLMClient(Protocol):
    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int | None = None) -> str: ...
    async def complete_tools(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        on_text: OnText | None = None,
    ) -> AssistantTurn: ...
    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]: ...
    def is_configured(self) -> bool: ...
    def describe(self) -> str: ...
    async def ping(self) -> str: ...
    async def warm_up(self) -> None: ...
    async def close(self) -> None: ...


def _resolve_key(profile: LLMProfile, env: Mapping[str, str]) -> tuple[str | None, str]:
    """(key, where it came from), (None, "") for a keyless local server, or (None, what to configure)."""
    if profile.api_key_env and env.get(profile.api_key_env, "").strip():
        return env[profile.api_key_env].strip(), f"key from ${profile.api_key_env}"
    wanted = [f"set the environment variable {profile.api_key_env}"] if profile.api_key_env else []
    if profile.api_key_file is not None:
        path = profile.api_key_file.expanduser()
        try:
            if key := path.read_text(encoding="utf-8").strip():
                return key, f"key from file {path}"
            wanted.append(f"put the key into the empty file {path}")
        except OSError as exc:
            wanted.append(f"make the key file {path} readable ({exc.strerror or type(exc).__name__})")
    return None, " or ".join(wanted)


class LiteLLMClient:
    """LLMClient over litellm with named profiles and a fallback chain."""

    def __init__(self, profiles: Mapping[str, LLMProfile], default: str, env: Mapping[str, str]) -> None:
        self._profiles = dict(profiles)
        self._default = default
        resolved = {name: _resolve_key(profile, env) for name, profile in self._profiles.items()}
        self._keys = {name: key for name, (key, _) in resolved.items() if key is not None}
        self._problems = {name: text for name, (key, text) in resolved.items() if key is None and text}
        self._sources = {name: text or "no key" for name, (_, text) in resolved.items() if name not in self._problems}
        self._lib: Any = None  # the litellm module, imported on first use

    def _import(self) -> Any:
        if self._lib is None:
            prepare_litellm_env(os.environ)
            lib: Any = importlib.import_module("litellm")
            lib.suppress_debug_info = True  # else it prints "Give Feedback / Get Help" on every error
            lib.disable_hf_tokenizer_download = True
            # pydantic warns once when litellm first builds a Message (mid-stream, -W error kills it): do it now
            warnings.filterwarnings("ignore", r"Item .* is using the `ReadOnly` qualifier", UserWarning)
            lib.ModelResponse()
            _route_litellm_logs_to_root()
            self._lib = lib
        return self._lib

    async def warm_up(self) -> None:
        """Import litellm in a worker thread so the first message is not slow."""
        await asyncio.to_thread(self._import)

    async def close(self) -> None:
        """Nothing to release: litellm's HTTP clients live as long as the process."""

    def _redact(self, text: str) -> str:
        for key in self._keys.values():
            text = text.replace(key, "***") if len(key) >= 4 else text
        return text

    def is_configured(self) -> bool:
        return self._default in self._profiles and self._default not in self._problems  # fallbacks not checked

    def _chain(self) -> list[str]:
        if self._default not in self._profiles:
            why = f"there is no LLM profile named {self._default!r}; the operator should add it"
            raise LLMNotConfigured(f"The AI model is not configured: {why} and run `switchboard doctor`.")
        names = [self._default]
        while (nxt := self._profiles[names[-1]].fallback) is not None and nxt in self._profiles and nxt not in names:
            names.append(nxt)
        return names

    def _describe_one(self, name: str) -> str:
        p = self._profiles[name]
        url = urlsplit(p.api_base or "")  # shown without credentials or query string
        where = f" @ {url.scheme}://{url.netloc.rpartition('@')[2]}{url.path}" if p.api_base else ""
        key = f"NOT CONFIGURED: {self._problems[name]}" if name in self._problems else self._sources[name]
        return f"{name}: {p.model}{where} ({key})"

    def describe(self) -> str:
        try:
            chain = self._chain()
        except LLMNotConfigured:
            return f"NOT CONFIGURED: no LLM profile named {self._default!r} (have: {sorted(self._profiles)})"
        parts = [self._describe_one(chain[0])] + [f"fallback {self._describe_one(n)}" for n in chain[1:]]
        dangling = self._profiles[chain[-1]].fallback
        if dangling is not None and dangling not in self._profiles:
            parts.append(f"fallback {dangling!r} does not exist")
        return self._redact("; ".join(parts))

    def _mapped_error(self, exc: BaseException) -> LLMError:
        err = _map_error(exc)
        err.detail = self._redact(err.detail)
        return err

    async def _call(
        self,
        name: str,
        messages: Sequence[ChatMessage],
        *,
        stream: bool,
        max_tokens: int | None,
        retries: int | None,
        tools: Sequence[Mapping[str, Any]] = (),
        usage: bool = False,
    ) -> Any:
        profile = self._profiles[name]
        if name in self._problems:
            why = f"The AI model is not configured: {self._problems[name]}, then run `switchboard doctor`."
            raise LLMNotConfigured(why, detail=f"profile {name!r}")
        lib = self._lib if self._lib is not None else await asyncio.to_thread(self._import)
        limit = max_tokens if max_tokens is not None else profile.max_tokens
        optional = {"api_base": profile.api_base, "max_tokens": limit, "temperature": profile.temperature}
        kwargs: dict[str, Any] = {k: v for k, v in optional.items() if v is not None} | {
            "model": profile.model,
            "messages": [m.wire() for m in messages],
            "api_key": self._keys.get(name, "sk-none"),  # keyless local servers
            "timeout": profile.timeout,
            "num_retries": profile.retries if retries is None else retries,
            "stream": stream,
            "_skip_mcp_handler": True,  # litellm 1.106.2 imports the proxy's MCP server otherwise (tools)
        }
        if tools:
            kwargs["tools"] = list(tools)
        if usage and stream:
            kwargs["stream_options"] = {"include_usage": True}
        try:
            return await lib.acompletion(**kwargs)
        except Exception as exc:
            raise self._mapped_error(exc) from None

    @staticmethod
    def _fall_back(failures: list[tuple[str, LLMError]], name: str, err: LLMError) -> None:
        """Record a failed profile and return to try the next one, or raise. Only transient errors fall back."""
        if not failures and not err.transient:
            raise err
        failures.append((name, err))
        if not (err.transient or isinstance(err, LLMNotConfigured)):
            raise _give_up(failures)

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int | None = None) -> str:
        failures: list[tuple[str, LLMError]] = []
        for name in self._chain():
            try:
                response = await self._call(name, messages, stream=False, max_tokens=max_tokens, retries=None)
            except LLMError as err:
                self._fall_back(failures, name, err)
            else:
                content = response.choices[0].message.content
                return content if isinstance(content, str) else ""
        raise _give_up(failures)

    async def complete_tools(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[Mapping[str, Any]],
        *,
        max_tokens: int | None = None,
        on_text: OnText | None = None,
    ) -> AssistantTurn:
        """One step of a tool-using loop. With `on_text` the answer streams (text deltas are forwarded as
        they arrive, tool calls are assembled from their fragments); profiles fall back like `complete`,
        and a streamed step only while nothing was forwarded yet."""
        failures: list[tuple[str, LLMError]] = []
        for name in self._chain():
            forwarded = False

            async def forward(delta: str) -> None:
                nonlocal forwarded
                forwarded = True
                assert on_text is not None
                await on_text(delta)

            try:
                if on_text is None:
                    response = await self._call(
                        name, messages, stream=False, max_tokens=max_tokens, retries=None, tools=tools
                    )
                    return assistant_turn(response)
                return await self._streamed_turn(name, messages, tools, max_tokens, forward)
            except LLMError as err:
                if forwarded:
                    raise
                self._fall_back(failures, name, err)
        raise _give_up(failures)

    async def _streamed_turn(
        self,
        name: str,
        messages: Sequence[ChatMessage],
        tools: Sequence[Mapping[str, Any]],
        max_tokens: int | None,
        on_text: OnText,
    ) -> AssistantTurn:
        response = await self._call(
            name, messages, stream=True, max_tokens=max_tokens, retries=None, tools=tools, usage=True
        )
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        prompt = completion = 0
        try:
            async for chunk in response:
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    prompt = int(getattr(usage, "prompt_tokens", 0) or 0) or prompt
                    completion = int(getattr(usage, "completion_tokens", 0) or 0) or completion
                choices = getattr(chunk, "choices", None)
                delta = getattr(choices[0], "delta", None) if choices else None
                if delta is None:
                    continue
                content = getattr(delta, "content", None)
                if isinstance(content, str) and content:
                    text.append(content)
                    await on_text(content)
                for fragment in getattr(delta, "tool_calls", None) or []:
                    merge_call(calls, fragment)
        except LLMError:
            raise
        except Exception as exc:
            raise self._mapped_error(exc) from None
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()
        tool_calls = tuple(
            ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"] or "{}")
            for i, c in sorted(calls.items())
            if c["name"]
        )
        return AssistantTurn(
            text="".join(text), tool_calls=tool_calls, prompt_tokens=prompt, completion_tokens=completion
        )

    async def _deltas(self, name: str, messages: Sequence[ChatMessage]) -> AsyncGenerator[str, None]:
        response = await self._call(name, messages, stream=True, max_tokens=None, retries=None)
        try:
            async for chunk in response:
                choices = getattr(chunk, "choices", None)
                text = getattr(choices[0].delta, "content", None) if choices else None
                if isinstance(text, str) and text:
                    yield text
        except Exception as exc:
            raise self._mapped_error(exc) from None
        finally:
            with contextlib.suppress(Exception):  # CustomStreamWrapper.aclose() releases the connection
                await response.aclose()

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[str]:
        """Text deltas; falls back to the next profile only if nothing was yielded yet."""
        failures: list[tuple[str, LLMError]] = []
        for name in self._chain():
            started = False
            try:
                async with contextlib.aclosing(self._deltas(name, messages)) as deltas:
                    async for text in deltas:
                        started = True
                        yield text
                return
            except LLMError as err:
                if started:
                    raise
                self._fall_back(failures, name, err)
        raise _give_up(failures)

    async def ping(self) -> str:
        """One 1-token completion on the default profile (no retries, no fallback); returns the model."""
        name = self._chain()[0]
        await self._call(name, [ChatMessage(role="user", content="ping")], stream=False, max_tokens=1, retries=0)
        return self._profiles[name].model


def _give_up(failures: list[tuple[str, LLMError]]) -> LLMError:
    """The primary profile's error, with what happened on the fallbacks appended to its detail."""
    first = failures[0][1]
    for name, err in failures[1:]:
        first.detail += f"; fallback {name!r}: {type(err).__name__} {err.detail}"
    return first


def _route_litellm_logs_to_root() -> None:
    """litellm attaches its own stderr handlers at import; they would bypass our redaction and JSON format."""
    for name in ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router", "litellm"):
        lib_logger = logging.getLogger(name)
        for handler in list(lib_logger.handlers):
            lib_logger.removeHandler(handler)
        lib_logger.propagate = True
        lib_logger.setLevel(max(lib_logger.level, logging.WARNING))
