"""Message types of the LLM interface (shared by the client, the worker protocol and the agent)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import BaseModel


class ToolCall(BaseModel, frozen=True):
    """The model asking to run tool `name`; `arguments` is the raw JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"


OnText = Callable[[str], Awaitable[None]]


class ChatMessage(BaseModel, frozen=True):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that called tools
    tool_call_id: str | None = None  # tool results: which call they answer

    def wire(self) -> dict[str, Any]:
        """The OpenAI chat-completions shape litellm expects."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class AssistantTurn(BaseModel, frozen=True):
    """One model answer in a tool-using loop: text, tool calls, and what it cost."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
