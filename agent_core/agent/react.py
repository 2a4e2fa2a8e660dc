"""The tool-using turn (Read -> Execute): offer routed skills, let the model open and run them, answer.

Bounded by steps, wall time and tokens; when a bound is hit the user is told which one, with
whatever the model had so far. LLM failures become the same short honest replies as a chat turn.
Every turn returns a `TurnTrace` (skills offered / opened / run, outcomes, errors, timings, tokens)
for the audit log and for the reflection step that improves the library.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent_core.agent.confirm import Confirmations, PendingAction
from agent_core.agent.memory import MemoryPort, load_memory_section
from agent_core.agent.ports import RouteHit, ScriptRunner, SkillFinder, SkillSource, TurnContext, TurnTrace
from agent_core.agent.tools import TOOL_DEFINITIONS, ToolBox, ToolError
from agent_core.chat import DEFAULT_SYSTEM_PROMPT, ChatAnswer, OnDelta
from agent_core.llm import ChatMessage, LLMClient, LLMError, LLMNotConfigured, ToolCall

log = logging.getLogger(__name__)

SKILL_GUIDE = (
    "You can use skills from a shared library. Skills that look relevant are listed below; call open_skill to "
    "read one's instructions before running it with run_skill. Use only what the tools return; never invent "
    "results. When you have the answer, reply to the user without calling a tool."
)


@dataclass(frozen=True)
class AgentLimits:
    """Per-turn bounds."""

    max_steps: int = 8
    wall_seconds: float = 120.0
    token_budget: int = 60_000
    skills_offered: int = 5


class SkillAgent:
    """Runs one tool-using turn against an LLMClient."""

    def __init__(
        self,
        llm: LLMClient,
        skills: SkillSource,
        finder: SkillFinder | None,
        run_script: ScriptRunner,
        *,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        limits: AgentLimits | None = None,
        privileged_roles: frozenset[str] = frozenset({"admin"}),
        confirmations: Confirmations | None = None,
        memory: MemoryPort | None = None,
    ) -> None:
        self._confirmations = confirmations
        self._memory = memory
        self._llm = llm
        self._skills = skills
        self._finder = finder
        self._run_script = run_script
        self._system_prompt = system_prompt
        self._limits = limits or AgentLimits()
        self._privileged_roles = privileged_roles

    def _route(self, query: str) -> tuple[list[RouteHit], list[str]]:
        """Hits and their prompt lines; runs in a worker thread (routing and library reads are CPU and disk)."""
        if self._finder is None:
            return [], []
        hits = [
            RouteHit(str(h.name), float(h.score), str(getattr(h, "why", "")))
            for h in self._finder.route(query, self._limits.skills_offered)
        ]
        lines = []
        for hit in hits:
            skill = self._skills.get(hit.name)
            if skill is not None:
                why = f" (matched: {hit.why})" if hit.why else ""
                lines.append(f"- {skill.meta.name}: {skill.meta.description}{why}")
        return hits, lines

    async def _offer(self, query: str) -> tuple[list[RouteHit], list[str]]:
        try:
            return await asyncio.to_thread(self._route, query)
        except Exception:
            log.exception("skill routing failed; answering without skills")
            return [], []

    def _system(self, lines: Sequence[str], notes: str = "") -> str:
        listing = "\n".join(lines) if lines else "(no skill matched this request)"
        memory = f"\n\n{notes}" if notes else ""
        return f"{self._system_prompt}\n\n{SKILL_GUIDE}\n\nSkills:\n{listing}{memory}"

    async def answer(
        self,
        history: Sequence[ChatMessage],
        user_texts: Sequence[str],
        ctx: TurnContext,
        on_delta: OnDelta | None = None,
    ) -> tuple[ChatAnswer, TurnTrace]:
        """The reply and the turn's trace."""
        started = time.monotonic()
        query = "\n\n".join(user_texts)
        trace = TurnTrace(query=query)
        (trace.offered, lines), notes = await asyncio.gather(
            self._offer(query), load_memory_section(self._memory, ctx.user_key, trace.errors, query)
        )
        messages = [
            ChatMessage(role="system", content=self._system(lines, notes)),
            *history,
            ChatMessage(role="user", content=query),
        ]
        tools = ToolBox(
            self._skills,
            self._run_script,
            ctx,
            trace,
            privileged_roles=self._privileged_roles,
            confirmations=self._confirmations,
            memory=self._memory,
        )
        try:
            if isinstance(ctx.confirmed, PendingAction):
                await self._run_confirmed(ctx.confirmed, tools, messages)
            answer = await self._loop(messages, tools, ctx, trace, started, on_delta)
        except LLMNotConfigured as exc:
            answer = ChatAnswer(text=exc.user_message, failed=True, error_kind="not_configured")
        except LLMError as exc:
            log.warning("LLM call failed in a tool turn: %s", type(exc).__name__)
            trace.errors.append(f"llm: {type(exc).__name__}")
            answer = ChatAnswer(text=exc.user_message, failed=True, error_kind=type(exc).__name__)
        trace.duration = time.monotonic() - started
        return answer, trace

    async def _run_confirmed(self, action: PendingAction, tools: ToolBox, messages: list[ChatMessage]) -> None:
        """Run exactly the action the user confirmed, and show the model its result to report on."""
        skill = await asyncio.to_thread(self._skills.get, action.skill)
        if skill is None:
            result = f"ERROR: the skill {action.skill!r} no longer exists; nothing was run."
        elif action.content_hash and skill.content_hash != action.content_hash:
            result = f"ERROR: {action.skill!r} changed since it was confirmed; nothing was run. Ask the user again."
        else:
            try:
                result = await tools.execute(skill, action.script, action.args_json)
            except ToolError as exc:
                result = f"ERROR: {exc}"
        call = ToolCall(
            id="confirmed",
            name="run_skill",
            arguments=json.dumps(
                {"name": action.skill, "script": action.script, "args": json.loads(action.args_json)},
                ensure_ascii=False,
            ),
        )
        messages.append(ChatMessage(role="assistant", content="", tool_calls=(call,)))
        messages.append(ChatMessage(role="tool", content=result, tool_call_id=call.id))

    async def _loop(
        self,
        messages: list[ChatMessage],
        tools: ToolBox,
        ctx: TurnContext,
        trace: TurnTrace,
        started: float,
        on_delta: OnDelta | None,
    ) -> ChatAnswer:
        limits = self._limits
        last_text = ""
        while True:
            if trace.steps >= limits.max_steps:
                return _stopped(
                    trace, "steps", f"I stopped after {limits.max_steps} steps (the per-turn limit).", last_text
                )
            remaining = limits.wall_seconds - (time.monotonic() - started)
            if remaining <= 0:
                return _stopped(trace, "time", f"I ran out of time ({limits.wall_seconds:.0f} s per turn).", last_text)
            if trace.prompt_tokens + trace.completion_tokens >= limits.token_budget:
                return _stopped(trace, "tokens", "I used up this turn's token budget.", last_text)
            if ctx.on_progress is not None:
                await ctx.on_progress("thinking")
            trace.steps += 1
            try:
                async with asyncio.timeout(remaining):
                    turn = await self._llm.complete_tools(messages, TOOL_DEFINITIONS, on_text=on_delta)
            except TimeoutError:
                return _stopped(trace, "time", f"I ran out of time ({limits.wall_seconds:.0f} s per turn).", last_text)
            trace.prompt_tokens += turn.prompt_tokens
            trace.completion_tokens += turn.completion_tokens
            last_text = turn.text.strip() or last_text
            if not turn.tool_calls:
                text = turn.text.strip()
                if ctx.on_progress is not None:
                    await ctx.on_progress("done")
                if not text:
                    return ChatAnswer(text="(The model returned an empty answer. Please try again.)", failed=True)
                return ChatAnswer(text=text)
            messages.append(ChatMessage(role="assistant", content=turn.text, tool_calls=turn.tool_calls))
            for call in turn.tool_calls:
                remaining = limits.wall_seconds - (time.monotonic() - started)
                try:
                    async with asyncio.timeout(max(remaining, 0.001)):  # tools count against the turn's time too
                        result = await tools.call(call.name, call.arguments)
                except TimeoutError:
                    reason = f"I ran out of time ({limits.wall_seconds:.0f} s per turn) while using a skill."
                    return _stopped(trace, "time", reason, last_text)
                messages.append(ChatMessage(role="tool", content=result, tool_call_id=call.id))


def _stopped(trace: TurnTrace, bound: str, reason: str, partial: str) -> ChatAnswer:
    trace.stopped_by = bound
    text = reason + (f"\n\nWhat I have so far:\n{partial}" if partial else " Please narrow the request and try again.")
    return ChatAnswer(text=text, failed=False, error_kind=f"bound:{bound}")
