"""Sandboxed execution of skill scripts: one user, one workspace, scrubbed env, hard limits.

See `isolation.py` for what each isolation level does and does not protect against.
"""

from agent_core.sandbox.envs import SkillEnvCache
from agent_core.sandbox.isolation import IsolationLevel, IsolationReport, detect_isolation
from agent_core.sandbox.policy import KillReason, RunResult, SandboxPolicy, grant_secrets
from agent_core.sandbox.runner import SandboxRunner, workspace_name

__all__ = [
    "IsolationLevel",
    "IsolationReport",
    "KillReason",
    "RunResult",
    "SandboxPolicy",
    "SandboxRunner",
    "SkillEnvCache",
    "detect_isolation",
    "grant_secrets",
    "workspace_name",
]
