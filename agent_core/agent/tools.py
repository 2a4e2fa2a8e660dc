"""The tools the model may call in a turn, with the permission checks that no prompt can talk around.

Every check runs here, in code, on the user's roles from the runtime, never on what the model says:
an admin-only skill stays closed to a non-admin even if the model asks for it ten times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent_core.agent.confirm import Confirmations
from agent_core.agent.memory import MemoryPort
from agent_core.agent.ports import ScriptRunner, SkillRun, SkillSource, TurnContext, TurnTrace
from agent_core.agent.workspace_files import WorkspacePathError, read_text, write_bytes
from agent_core.skills.model import Skill

log = logging.getLogger(__name__)

MAX_READ_BYTES = 64 * 1024
MAX_WRITE_BYTES = 1024 * 1024
MAX_TOOL_RESULT_CHARS = 8000  # what goes back into the prompt from one call
MAX_NOTE_CHARS = 500
PRIVILEGED = ("shell", "fs-write", "secrets:")


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


TOOL_DEFINITIONS: list[dict[str, Any]] = [
    _fn("open_skill", "Read a skill's full instructions before using it.", {"name": {"type": "string"}}, ["name"]),
    _fn(
        "run_skill",
        "Run one of a skill's scripts in the sandbox with JSON arguments; returns its output.",
        {"name": {"type": "string"}, "script": {"type": "string"}, "args": {"type": "object"}},
        ["name", "script"],
    ),
    _fn("read_file", "Read a file from the user's workspace.", {"path": {"type": "string"}}, ["path"]),
    _fn(
        "write_file",
        "Write a file in the user's workspace.",
        {"path": {"type": "string"}, "content": {"type": "string"}},
        ["path", "content"],
    ),
    _fn(
        "remember",
        "Save a short note about this user for future conversations (what they asked you to remember).",
        {"note": {"type": "string"}},
        ["note"],
    ),
    _fn(
        "forget_memory",
        "Delete one of the user's remembered notes, by the id shown next to it, when the user asks to forget it.",
        {"id": {"type": "integer"}},
        ["id"],
    ),
]


def needs_confirmation(skill: Skill) -> bool:
    """`confirm:` in the front matter, read so that anything but an explicit no asks (fails closed)."""
    value = skill.meta.extra.get("confirm")
    if value is None or value is False:
        return False
    return not (isinstance(value, str) and value.strip().lower() in ("", "false", "no", "0", "off"))


class ToolError(Exception):
    """A call the model made that cannot be carried out; the message goes back to the model."""


class ToolBox:
    """Carries out the model's tool calls for one turn."""

    def __init__(
        self,
        skills: SkillSource,
        run_script: ScriptRunner,
        ctx: TurnContext,
        trace: TurnTrace,
        *,
        privileged_roles: frozenset[str] = frozenset({"admin"}),
        confirmations: Confirmations | None = None,
        memory: MemoryPort | None = None,
    ) -> None:
        self._confirmations = confirmations
        self._memory = memory
        self._skills = skills
        self._run_script = run_script
        self._ctx = ctx
        self._trace = trace
        self._privileged_roles = privileged_roles

    async def call(self, name: str, arguments: str) -> str:
        """The tool's result as text for the model (errors included: the model should adapt)."""
        try:
            args = json.loads(arguments or "{}")
            if not isinstance(args, dict):
                raise ToolError("arguments must be a JSON object")
            handler = {
                "open_skill": self._open_skill,
                "run_skill": self._run_skill,
                "read_file": self._read_file,
                "write_file": self._write_file,
                "remember": self._remember,
                "forget_memory": self._forget_memory,
            }.get(name)
            if handler is None:
                raise ToolError(f"unknown tool {name!r}")
            result = await handler(args)
        except (ToolError, ValueError) as exc:
            self._trace.errors.append(f"{name}: {exc}")
            return f"ERROR: {exc}"
        except Exception as exc:  # a broken tool must cost one honest error, never the whole turn (and its retries)
            log.exception("tool %s failed", name)
            self._trace.errors.append(f"{name}: internal {type(exc).__name__}")
            return f"ERROR: the tool failed ({type(exc).__name__}); nothing more is known"
        return result[:MAX_TOOL_RESULT_CHARS]

    async def _skill(self, args: Mapping[str, Any]) -> Skill:
        name = args.get("name")
        if not isinstance(name, str) or not name:
            raise ToolError("a skill name is required")
        skill = await asyncio.to_thread(self._skills.get, name)  # the library reads its index from disk
        if skill is None:
            raise ToolError(f"no skill named {name!r}")
        self._check_audience(skill)
        return skill

    def _check_audience(self, skill: Skill) -> None:
        audience = set(skill.meta.audience)
        if audience and not audience & self._ctx.roles:
            raise ToolError(f"skill {skill.meta.name!r} is only for: {', '.join(sorted(audience))}")

    async def _open_skill(self, args: Mapping[str, Any]) -> str:
        skill = await self._skill(args)
        self._trace.opened.append(skill.meta.name)
        scripts = sorted(p.name for p in (skill.path / "scripts").glob("*") if p.is_file())
        listing = f"\n\nScripts: {', '.join(scripts)}" if scripts else ""
        return f"# {skill.meta.name} (version {skill.meta.version})\n\n{skill.instructions}{listing}"

    def _check_permissions(self, skill: Skill) -> dict[str, str]:
        """The secrets this run gets; raises when the user's roles do not cover the skill's permissions."""
        privileged = [p for p in skill.meta.permissions if p.startswith(PRIVILEGED)]
        if privileged and not self._privileged_roles & self._ctx.roles:
            raise ToolError(f"skill {skill.meta.name!r} needs {', '.join(privileged)}, which your role does not allow")
        wanted = [p.split(":", 1)[1] for p in skill.meta.permissions if p.startswith("secrets:")]
        grants = self._ctx.secret_grants
        allowed = set(wanted) if grants is None else set(wanted) & set(grants.get(skill.meta.name, frozenset()))
        return {k: self._ctx.granted_secrets[k] for k in wanted if k in allowed and k in self._ctx.granted_secrets}

    async def _run_skill(self, args: Mapping[str, Any]) -> str:
        skill = await self._skill(args)
        self._check_permissions(skill)  # before anything, parking included: a refused user cannot park either
        script = args.get("script")
        if not isinstance(script, str) or not script or "/" in script or script.startswith("."):
            raise ToolError("script must be a file name from the skill's scripts/ folder")
        if not (skill.path / "scripts" / script).is_file():
            raise ToolError(f"skill {skill.meta.name!r} has no script {script!r}")
        payload = json.dumps(args.get("args") or {}, ensure_ascii=False)
        if needs_confirmation(skill):
            if self._confirmations is None:
                raise ToolError(f"skill {skill.meta.name!r} needs a confirmation, which this channel cannot ask for")
            action = self._confirmations.park(
                self._ctx.user_key, skill.meta.name, script, payload, content_hash=skill.content_hash
            )
            return (
                f"CONFIRMATION REQUIRED: {skill.meta.name} changes things. Nothing was run. Tell the user exactly what "
                f"will happen and ask them to reply `confirm {action.code}` within "
                f"{max(1, int(self._confirmations.ttl // 60))} minutes."
            )
        return await self.execute(skill, script, payload)

    async def execute(self, skill: Skill, script: str, payload: str) -> str:
        """Run a script; audience and permissions are checked again (a confirmed action too)."""
        self._check_audience(skill)
        secrets = self._check_permissions(skill)
        network = "network" in skill.meta.permissions and self._ctx.network_allowed
        if self._ctx.on_progress is not None:
            await self._ctx.on_progress(f"running skill {skill.meta.name}")
        started = time.monotonic()
        try:
            outcome = await self._run_script(
                user_key=self._ctx.user_key,
                skill=skill,
                script=script,
                args_json=payload,
                secrets=secrets,
                network=network,
            )
        except asyncio.CancelledError:  # time limit or shutdown mid-run: the script may have changed things
            cut = SkillRun(
                skill=skill.meta.name,
                version=skill.content_hash[:12],
                args=payload[:2000],
                exit_code=None,
                ok=False,
                duration=time.monotonic() - started,
                error="cancelled while running (turn time limit or shutdown)",
            )
            self._trace.runs.append(cut)
            await asyncio.shield(self._audit(cut))
            raise
        ok = outcome.exit_code == 0 and outcome.killed_reason is None
        error = outcome.killed_reason or ("" if ok else outcome.stderr[-500:])
        run = SkillRun(
            skill=skill.meta.name,
            version=skill.content_hash[:12],
            args=payload[:2000],
            exit_code=outcome.exit_code,
            ok=ok,
            duration=time.monotonic() - started,
            error=error,
            output_excerpt=outcome.stdout[:500],
        )
        self._trace.runs.append(run)
        await self._audit(run)
        if not ok:
            return f"ERROR: the script failed ({error or f'exit code {outcome.exit_code}'}).\n{outcome.stdout[:2000]}"
        return outcome.stdout

    def _target(self, args: Mapping[str, Any]) -> tuple[Path, str]:
        root = self._ctx.workspace
        if root is None:
            raise ToolError("this conversation has no workspace")
        raw = args.get("path")
        if not isinstance(raw, str) or not raw:
            raise ToolError("a path is required")
        return root, raw

    async def _read_file(self, args: Mapping[str, Any]) -> str:
        root, raw = self._target(args)
        try:
            text, longer = await asyncio.to_thread(read_text, root, raw, MAX_READ_BYTES)
        except WorkspacePathError as exc:
            raise ToolError(str(exc)) from None
        return text + ("\n[truncated]" if longer else "")

    async def _write_file(self, args: Mapping[str, Any]) -> str:
        root, raw = self._target(args)
        content = args.get("content")
        if not isinstance(content, str):
            raise ToolError("content must be text")
        data = content.encode("utf-8")
        if len(data) > MAX_WRITE_BYTES:
            raise ToolError(f"file too large (limit {MAX_WRITE_BYTES} bytes)")
        try:
            where = await asyncio.to_thread(write_bytes, root, raw, data)
        except WorkspacePathError as exc:
            raise ToolError(str(exc)) from None
        return f"wrote {len(data)} bytes to {where}"

    async def _audit(self, run: SkillRun) -> None:
        """The run is on record before the model sees its result (the turn may still fail after it)."""
        if self._ctx.on_run is None:
            return
        try:
            await self._ctx.on_run(run)
        except Exception as exc:  # the action happened; losing its record is an operator problem, said loudly
            log.exception("could not write the audit row of a %s run", run.skill)
            self._trace.errors.append(f"audit: {type(exc).__name__}")

    async def _remember(self, args: Mapping[str, Any]) -> str:
        note = args.get("note")
        if not isinstance(note, str) or not note.strip():
            raise ToolError("a note is required")
        self._trace.memory_notes.append(note.strip()[:MAX_NOTE_CHARS])
        if self._memory is None:
            return "noted"
        stored = await self._memory.add(self._ctx.user_key, note, now=time.time())
        return "already remembered" if stored is None else f"noted (id {stored.id})"

    async def _forget_memory(self, args: Mapping[str, Any]) -> str:
        raw = args.get("id")
        if isinstance(raw, str) and raw.strip().isdigit():  # models sometimes quote numbers
            raw = int(raw)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ToolError("id must be the number shown next to the note")
        if self._memory is None:
            raise ToolError("there is no memory in this conversation")
        if not await self._memory.forget(self._ctx.user_key, raw):
            raise ToolError(f"this user has no note with id {raw}")
        return f"forgotten (id {raw})"
