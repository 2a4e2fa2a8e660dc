"""What the agent loop needs from the skill library, the router, the sandbox and the runtime.

Narrow protocols so the loop is testable with the real pieces and knows none of their storage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent_core.skills.model import Skill


@dataclass(frozen=True)
class RouteHit:
    """A skill offered to the model, and why."""

    name: str
    score: float
    why: str = ""


class SkillFinder(Protocol):
    def route(self, query: str, k: int = 5) -> list[Any]:
        """Hits with `.name`, `.score` and `.why` (the router's own type)."""
        ...


class SkillSource(Protocol):
    def get(self, name: str) -> Skill | None:
        """The active version of a skill, or None."""
        ...


@dataclass(frozen=True)
class ScriptOutcome:
    """What a sandboxed script run produced (capped)."""

    exit_code: int | None
    stdout: str
    stderr: str
    duration: float
    killed_reason: str | None = None


class ScriptRunner(Protocol):
    async def __call__(
        self, *, user_key: str, skill: Skill, script: str, args_json: str, secrets: Mapping[str, str], network: bool
    ) -> ScriptOutcome:
        """Run `scripts/<script>` of `skill` for this user in the sandbox with JSON args on stdin."""
        ...


OnProgress = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class TurnContext:
    """Who is asking, what they may do, and where their files live."""

    user_key: str
    roles: frozenset[str] = frozenset()
    workspace: Path | None = None
    on_progress: OnProgress | None = None
    granted_secrets: Mapping[str, str] = field(default_factory=dict)
    # which secrets each skill may receive (None: any declared secret from the pool; the runtime always
    # passes the config's per-skill grants, so an unlisted skill gets none)
    secret_grants: Mapping[str, frozenset[str]] | None = None
    network_allowed: bool = True
    # an action the user has just confirmed in chat (see agent/confirm.py): run before the model speaks
    confirmed: Any = None
    # the audit log: called as soon as a skill run ends, so a turn that fails later still leaves its record
    on_run: Callable[[SkillRun], Awaitable[None]] | None = None


@dataclass
class SkillRun:
    """One skill execution in a turn (for the audit log and the reflection step)."""

    skill: str
    version: str
    args: str
    exit_code: int | None
    ok: bool
    duration: float
    error: str = ""
    output_excerpt: str = ""


@dataclass
class TurnTrace:
    """Everything the next step (reflection, skill rewriting) needs to learn from a turn."""

    query: str
    offered: list[RouteHit] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)
    runs: list[SkillRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration: float = 0.0
    stopped_by: str = ""  # "", "steps", "time", "tokens"
    memory_notes: list[str] = field(default_factory=list)
