"""Reading tool-using answers from litellm responses (whole or streamed): pure functions."""

from __future__ import annotations

import json
from typing import Any

from agent_core.llm_types import AssistantTurn, ToolCall


def assistant_turn(response: Any) -> AssistantTurn:
    """litellm's ModelResponse as an AssistantTurn (tolerant of providers that omit fields)."""
    message = response.choices[0].message
    calls = []
    for i, call in enumerate(getattr(message, "tool_calls", None) or []):
        function = getattr(call, "function", None)
        name = getattr(function, "name", None)
        if not isinstance(name, str) or not name:
            continue
        arguments = getattr(function, "arguments", None)
        call_id = getattr(call, "id", None) or f"call_{i}"
        calls.append(ToolCall(id=str(call_id), name=name, arguments=arguments if isinstance(arguments, str) else "{}"))
    usage = getattr(response, "usage", None)
    content = getattr(message, "content", None)
    return AssistantTurn(
        text=content if isinstance(content, str) else "",
        tool_calls=tuple(calls),
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


def merge_call(calls: dict[int, dict[str, str]], fragment: Any) -> None:
    """Streamed tool calls arrive in pieces: id and name once, arguments in parts, usually keyed by index.

    Providers differ: some omit the index, some send each whole call in one fragment (possibly all with
    index 0). A fragment with a new id starts a new call; one without index, id and name continues the
    last call.
    """
    index = getattr(fragment, "index", None)
    call_id = getattr(fragment, "id", None)
    call_id = call_id if isinstance(call_id, str) and call_id else ""
    function = getattr(fragment, "function", None)
    name = getattr(function, "name", None)
    name = name if isinstance(name, str) else ""
    arguments = getattr(function, "arguments", None)
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    arguments = arguments if isinstance(arguments, str) else ""
    if (
        isinstance(index, int)
        and index in calls
        and not (call_id and calls[index]["id"] and call_id != calls[index]["id"])
    ) or (isinstance(index, int) and index not in calls):
        key = index
    elif not call_id and not name and calls:
        key = max(calls)  # a continuation without any key
    else:
        key = max(calls, default=-1) + 1
    entry = calls.setdefault(key, {"id": "", "name": "", "arguments": ""})
    if call_id:
        entry["id"] = call_id
    if name:
        entry["name"] = name
    entry["arguments"] += arguments
