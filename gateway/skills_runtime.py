"""Wires the skill library, router and sandbox into the agent (the composition root calls `build`).

The router index follows the library: built in a worker thread at start (model load + index), then
kept current by the library's change events and by polling its revision, so skills installed with
the CLI while the service runs become routable without a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_core.agent.ports import ScriptOutcome
from agent_core.llm import LLMClient
from agent_core.sandbox.envs import SkillEnvCache
from agent_core.sandbox.runner import SandboxRunner
from agent_core.skills.library import SkillLibrary
from agent_core.skills.model import Skill

if TYPE_CHECKING:  # the router pulls in numpy and jieba: imported when the agent starts, not at CLI start
    from agent_core.router import SkillRouter
from gateway.config import Settings
from gateway.responders import RunAudit, SkillResponder
from gateway.skill_utility import Outcomes, refresh_skill_utilities
from sessions.memory import MemoryStore

log = logging.getLogger(__name__)

REFRESH_SECONDS = 10.0
UTILITY_SECONDS = 300.0  # run outcomes move the utility prior slowly; a few minutes of lag costs nothing
Spawn = Callable[[Coroutine[Any, Any, None], str], object]


class LibrarySource:
    """agent_core.agent.ports.SkillSource over the library (None instead of an exception), cached.

    A library read opens its index and parses SKILL.md (~1.5 ms); a turn looks up every offered skill,
    so uncached lookups cost more CPU than the rest of the turn. Versions are immutable, so a cached
    Skill stays right until the active pointer moves: the cache is dropped on every library change
    (listener in this process, revision poll for the CLI's changes).
    """

    def __init__(self, library: SkillLibrary) -> None:
        self._library = library
        self._cache: dict[str, Skill | None] = {}
        library.subscribe(lambda _change: self.invalidate())

    def get(self, name: str) -> Skill | None:
        if name in self._cache:
            return self._cache[name]
        try:
            skill: Skill | None = self._library.get(name)
        except Exception:
            skill = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = skill
        return skill

    def invalidate(self) -> None:
        """Forget every cached lookup (the library changed)."""
        self._cache = {}


class SandboxScripts:
    """agent_core.agent.ports.ScriptRunner: a skill's script in the sandbox, as `python scripts/<name>`."""

    def __init__(
        self,
        runner: SandboxRunner,
        envs: SkillEnvCache | None = None,
        python: str = sys.executable,
        refuse: str = "",
    ) -> None:
        self._refuse = refuse  # why scripts may not run on this host ("" = they may)
        self._runner = runner
        self._envs = envs
        self._python = python

    async def _interpreter(self, skill: Skill) -> str:
        """The gateway's Python, or the skill version's own cached environment when it has requirements."""
        if not skill.meta.requirements or self._envs is None:
            return self._python
        env_python = await self._envs.ensure_env(skill.meta.name, skill.content_hash, skill.meta.requirements)
        return str(env_python)

    async def __call__(
        self, *, user_key: str, skill: Skill, script: str, args_json: str, secrets: Mapping[str, str], network: bool
    ) -> ScriptOutcome:
        if self._refuse:
            return ScriptOutcome(None, "", self._refuse, 0.0, killed_reason="isolation")
        try:
            python = await self._interpreter(skill)
        except Exception as exc:  # e.g. no package index reachable: say so instead of running without them
            reason = f"could not prepare the skill's Python environment: {type(exc).__name__}: {exc}"
            return ScriptOutcome(
                exit_code=None, stdout="", stderr=reason[:500], duration=0.0, killed_reason="environment"
            )
        policy = dataclasses.replace(self._runner.default_policy, allow_network=network, secrets=dict(secrets))
        try:
            result = await self._runner.run(
                user_key=user_key,
                skill_dir=skill.path,
                command=[python, f"scripts/{script}"],
                stdin_json=args_json,
                policy=policy,
            )
        except Exception as exc:  # the sandbox itself failed (bwrap, workspace, executable): an honest error
            log.exception("sandbox could not run %s/%s", skill.meta.name, script)
            return ScriptOutcome(None, "", f"the sandbox failed: {type(exc).__name__}", 0.0, killed_reason="sandbox")
        return ScriptOutcome(
            exit_code=result.exit_code,
            stdout=result.stdout.decode("utf-8", errors="replace"),
            stderr=result.stderr.decode("utf-8", errors="replace"),
            duration=result.duration,
            killed_reason=result.killed_reason,
        )


class LazyRouter:
    """The router once its index is built; until then (or if it failed) no skills are offered."""

    def __init__(self) -> None:
        self.router: Any = None
        self.error = ""

    def route(self, query: str, k: int = 5) -> list[Any]:
        return [] if self.router is None else list(self.router.route(query, k))

    def learn(self, name: str, query: str) -> None:
        """A skill answered this query successfully: route similar queries to it (MetaTool's learned setting)."""
        if self.router is not None:
            self.router.learn(name, query)


def sync_router(library: SkillLibrary, router: SkillRouter) -> None:
    """Make the router index exactly the library's active skills (new, changed and removed ones)."""
    cards = library.cards()
    router.upsert(cards)
    known = {c.name for c in cards}
    stale = [n for n in router.names() if n not in known]
    if stale:
        router.remove(stale)


async def keep_router_current(
    library: SkillLibrary,
    lazy: LazyRouter,
    db_path: Path,
    stop: asyncio.Event,
    on_change: Callable[[], None],
    outcomes: Outcomes | None = None,
    embedder: Any = "default",
) -> None:
    """Build the index off the loop, then follow library changes (also those made by the CLI) and,
    every few minutes, feed the skills' run outcomes into the router's utility prior."""
    from agent_core.router import SkillRouter
    from agent_core.skills.seeds import ensure_seeds

    def build() -> tuple[SkillRouter, int]:
        ensure_seeds(library)
        router = SkillRouter(db_path, embedder=embedder)
        revision = library.revision()
        sync_router(library, router)
        return router, revision

    try:
        router, revision = await asyncio.to_thread(build)
    except Exception as exc:
        lazy.error = f"{type(exc).__name__}: {exc}"
        log.exception("skill router unavailable; turns run without skills")
        return
    lazy.router = router
    log.info("skill router ready: %s", router.stats())
    next_utility = 0.0
    try:
        while not stop.is_set():
            if outcomes is not None and time.monotonic() >= next_utility:
                next_utility = time.monotonic() + UTILITY_SECONDS
                try:
                    await refresh_skill_utilities(outcomes, router)
                except Exception:  # a missed refresh keeps the previous priors
                    log.exception("could not refresh skill utilities")
            try:
                await asyncio.wait_for(stop.wait(), REFRESH_SECONDS)
            except TimeoutError:
                current = await asyncio.to_thread(library.revision)
                if current != revision:
                    await asyncio.to_thread(sync_router, library, router)
                    on_change()
                    revision = current
    finally:
        await asyncio.to_thread(router.close)


async def build_skill_responder(
    settings: Settings,
    env: Mapping[str, str],
    llm: LLMClient,
    spawn: Spawn,
    stop: asyncio.Event,
    memory: MemoryStore | None = None,
    outcomes: Outcomes | None = None,
    audit: RunAudit | None = None,
    embedder: Any = "default",
) -> SkillResponder:
    """The skill agent with its library, router (built in the background), sandbox and the users' memory."""
    from agent_core.agent.confirm import Confirmations
    from agent_core.agent.react import AgentLimits, SkillAgent

    data = settings.storage.data_dir
    cfg = settings.agent
    library = await asyncio.to_thread(SkillLibrary, data / "skills")
    sandbox = await asyncio.to_thread(SandboxRunner, data / "workspaces")  # probes the isolation level once
    lazy = LazyRouter()
    confirmations = Confirmations()
    source = LibrarySource(library)
    spawn(
        keep_router_current(
            library, lazy, data / "skill_router.sqlite3", stop, source.invalidate, outcomes, embedder=embedder
        ),
        "skill-router",
    )
    envs = SkillEnvCache(data / "skill_envs")
    refuse = _isolation_refusal(sandbox, cfg.min_isolation)
    agent = SkillAgent(
        llm,
        source,
        lazy,
        SandboxScripts(sandbox, envs, refuse=refuse),
        system_prompt=settings.llm.system_prompt,
        limits=AgentLimits(
            max_steps=cfg.max_steps,
            wall_seconds=cfg.wall_seconds,
            token_budget=cfg.token_budget,
            skills_offered=cfg.skills_offered,
        ),
        privileged_roles=frozenset(cfg.privileged_roles),
        confirmations=confirmations,
        memory=memory,
    )
    secrets = {name: env[var] for name, var in cfg.secrets_env.items() if env.get(var)}
    log.info("skill agent ready: sandbox %s", sandbox.describe())
    return SkillResponder(
        agent,
        roles=cfg.roles,
        secrets=secrets,
        workspace_of=sandbox.workspace,
        allow_network=cfg.allow_network,
        confirmations=confirmations,
        learn=lazy.learn,
        secret_grants=cfg.skill_secrets,
        audit=audit,
    )


def _isolation_refusal(sandbox: SandboxRunner, minimum: str) -> str:
    """Why skill scripts must not run here ("" when the host's sandbox meets `agent.min_isolation`)."""
    from agent_core.sandbox.isolation import IsolationLevel

    have, need = sandbox.isolation.level, IsolationLevel[minimum.upper()]
    if have >= need:
        return ""
    reason = f"skill scripts are disabled: this host's sandbox is {have.name.lower()}, config requires {minimum}"
    log.error("%s (install bubblewrap or lower agent.min_isolation)", reason)
    return reason


class SandboxTestRunner:
    """agent_core.skills.testing.ScriptRunner for `skills verify`: a skill's tests run in the sandbox too,
    with network only if the skill declares it (verification may run code fetched from a git URL)."""

    def __init__(self, sandbox: SandboxRunner, python: str = sys.executable) -> None:
        self._sandbox = sandbox
        self._python = python

    def run(self, skill_path: Path, script: str, args_json: str, timeout: float) -> Any:
        from agent_core.skills.parse import read_skill_dir
        from agent_core.skills.testing import RunResult

        meta, _ = read_skill_dir(skill_path)
        policy = dataclasses.replace(
            self._sandbox.default_policy, wall_timeout=timeout, allow_network="network" in meta.permissions
        )
        command = [self._python, script] if script.endswith(".py") else [script]
        result = asyncio.run(
            self._sandbox.run(
                user_key=f"verify:{meta.name}",
                skill_dir=skill_path,
                command=command,
                stdin_json=args_json,
                policy=policy,
            )
        )
        code = 124 if result.killed_reason == "timeout" else result.exit_code
        return RunResult(code, result.stdout.decode("utf-8", "replace"), result.stderr.decode("utf-8", "replace"))
