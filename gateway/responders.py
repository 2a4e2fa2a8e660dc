"""What answers a turn: a plain chat, or the skill agent with the user's roles, secrets and workspace.

The turn runner knows only `Responder`; the composition root picks one from config. The skill
responder turns the session into the agent's `TurnContext` (roles from config by
"<platform>:<user id>", the user's private sandbox workspace) and returns the turn's trace for storage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent_core.agent.confirm import Confirmations
from agent_core.agent.ports import SkillRun, TurnContext
from agent_core.agent.react import SkillAgent
from agent_core.chat import ChatAgent, ChatAnswer
from agent_core.llm import ChatMessage
from gateway.messages import InboundMessage, SessionKey

OnText = Callable[[str], Awaitable[None]]


class RunAudit(Protocol):
    async def __call__(self, *, at: float, session_key: str, user_id: str, run: Mapping[str, Any]) -> None: ...


UNKNOWN_CODE = "That confirmation code is unknown or has expired, so nothing was run. Ask again if you still want it."


class Responder(Protocol):
    async def respond(
        self,
        key: SessionKey,
        last: InboundMessage,
        history: Sequence[ChatMessage],
        texts: Sequence[str],
        on_delta: OnText | None,
        on_progress: OnText | None,
    ) -> tuple[ChatAnswer, dict[str, Any] | None]:
        """The answer, and the turn's trace if there is one to keep."""
        ...


class PlainResponder:
    """History in, one answer out (no tools)."""

    def __init__(self, agent: ChatAgent) -> None:
        self._agent = agent

    async def respond(
        self,
        key: SessionKey,
        last: InboundMessage,
        history: Sequence[ChatMessage],
        texts: Sequence[str],
        on_delta: OnText | None,
        on_progress: OnText | None,
    ) -> tuple[ChatAnswer, dict[str, Any] | None]:
        return await self._agent.answer(history, texts, on_delta), None


class SwitchableResponder:
    """Answers with `target`; the composition root upgrades it once the skill machinery has started."""

    def __init__(self, target: Responder) -> None:
        self.target = target

    async def respond(
        self,
        key: SessionKey,
        last: InboundMessage,
        history: Sequence[ChatMessage],
        texts: Sequence[str],
        on_delta: OnText | None,
        on_progress: OnText | None,
    ) -> tuple[ChatAnswer, dict[str, Any] | None]:
        return await self.target.respond(key, last, history, texts, on_delta, on_progress)


class SkillResponder:
    """The Read -> Execute turn over the shared skill library."""

    def __init__(
        self,
        agent: SkillAgent,
        *,
        roles: Mapping[str, Sequence[str]],
        secrets: Mapping[str, str],
        workspace_of: Callable[[str], Path],
        allow_network: bool,
        confirmations: Confirmations | None = None,
        learn: Callable[[str, str], None] | None = None,
        secret_grants: Mapping[str, Sequence[str]] | None = None,
        audit: RunAudit | None = None,
    ) -> None:
        self._audit = audit
        self._secret_grants = {k: frozenset(v) for k, v in (secret_grants or {}).items()}
        self._learn = learn
        self._agent = agent
        self._confirmations = confirmations
        self._members = {role: frozenset(members) for role, members in roles.items()}
        self._secrets = dict(secrets)
        self._workspace_of = workspace_of
        self._allow_network = allow_network

    def _audit_sink(self, session_key: str, user_key: str) -> Callable[[SkillRun], Awaitable[None]] | None:
        audit = self._audit
        if audit is None:
            return None

        async def on_run(run: SkillRun) -> None:
            await audit(at=time.time(), session_key=session_key, user_id=user_key, run=dataclasses.asdict(run))

        return on_run

    def roles_of(self, platform: str, user_id: str) -> frozenset[str]:
        """The configured roles of a platform user."""
        member = f"{platform}:{user_id}"
        return frozenset(role for role, members in self._members.items() if member in members)

    async def respond(
        self,
        key: SessionKey,
        last: InboundMessage,
        history: Sequence[ChatMessage],
        texts: Sequence[str],
        on_delta: OnText | None,
        on_progress: OnText | None,
    ) -> tuple[ChatAnswer, dict[str, Any] | None]:
        user_key = f"{last.platform}:{last.bot_id}:{last.sender_id}"
        confirmed = None
        confirming = self._confirmations is not None and self._confirmations.is_confirmation(last.text)
        if confirming and self._confirmations is not None and self._confirmations.has_pending(user_key):
            confirmed = self._confirmations.take(user_key, last.text)  # only this user's own codes
            if confirmed is None:
                return ChatAnswer(text=UNKNOWN_CODE), None
        workspace = await asyncio.to_thread(self._workspace_of, user_key)  # the sandbox's, created 0700
        ctx = TurnContext(
            user_key=user_key,
            roles=self.roles_of(last.platform, last.sender_id),
            workspace=workspace,
            on_progress=on_progress,
            granted_secrets=self._secrets,
            secret_grants=self._secret_grants,
            network_allowed=self._allow_network,
            confirmed=confirmed,
            on_run=self._audit_sink(str(key), user_key),
        )
        answer, trace = await self._agent.answer(history, texts, ctx, on_delta)
        succeeded = {run.skill for run in trace.runs if run.ok}
        if self._learn is not None and succeeded and not answer.failed:
            for name in sorted(succeeded):  # the router learns which skill served this kind of request
                await asyncio.to_thread(self._learn, name, trace.query)
        return answer, dataclasses.asdict(trace)
