"""`verify`: everything that can be checked about a skill before trusting it.

Static checks (front matter, permissions, folder safety, size, referenced scripts) plus the skill's
own test cases run through a ScriptRunner. The same function serves `switchboard skills verify`, the
install gate of agent-written skills, and CI for the seed library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent_core.skills.files import static_problems
from agent_core.skills.parse import SkillError, read_skill_dir
from agent_core.skills.testing import CaseResult, ScriptRunner, load_cases, run_case


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of verify; `ok` when there are no problems and every case passed."""

    path: Path
    problems: list[str] = field(default_factory=list)
    cases: list[CaseResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the skill can be trusted as far as checks can tell."""
        return not self.problems and all(c.ok for c in self.cases)

    def lines(self) -> list[str]:
        """A human-readable report, one finding per line."""
        out = [f"problem: {p}" for p in self.problems]
        out += [f"warning: {w}" for w in self.warnings]
        for result in self.cases:
            label = f"{result.case.file} :: {result.case.name}"
            if result.ok:
                out.append(f"pass: {label} ({result.seconds:.2f}s)")
            else:
                out += [f"FAIL: {label}: {failure}" for failure in result.failures]
        out.append("verify: OK" if self.ok else "verify: FAILED")
        return out


def verify_skill(path: Path, runner: ScriptRunner) -> VerifyReport:
    """Static checks, then (if those pass) every test case of the skill at `path`."""
    problems = static_problems(path)
    if problems:
        return VerifyReport(path, problems)
    try:
        meta, _ = read_skill_dir(path)
        cases = load_cases(path)
    except (SkillError, ValueError) as exc:
        return VerifyReport(path, [str(exc)])
    warnings: list[str] = []
    has_scripts = (path / "scripts").is_dir() and any((path / "scripts").iterdir())
    if has_scripts and not cases:
        warnings.append("the skill has scripts but no tests/ cases; nothing was run")
    results = [run_case(runner, path, case, meta.input_schema) for case in cases]
    return VerifyReport(path, [], results, warnings)
