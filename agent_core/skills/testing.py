"""A skill's own tests, and the seam through which its scripts are run.

Test cases live in `tests/*.yaml|yml|json` of the skill: a list of cases, or `{cases: [...]}`:
    - name: title found              # shown in reports
      script: scripts/fetch.py       # optional when the skill has exactly one script
      input: {url: "data:..."}       # the JSON object the script reads on stdin
      timeout: 20                    # seconds (default 30)
      expect: {exit_code: 0, json: {"$.title": "Hello"}}   # see agent_core.skills.expect

Script contract: the arguments arrive as one JSON object on stdin; the result goes to stdout (JSON
preferred); exit code 0 means success. `ScriptRunner` is the only way scripts run, so the sandbox
can replace `SubprocessRunner` without touching the library or the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import yaml

from agent_core.skills.expect import check_output

TEST_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_TIMEOUT = 30.0
MAX_OUTPUT = 1024 * 1024


class RunResult(NamedTuple):
    """What a script run produced (a plain tuple: `exit_code, stdout, stderr = runner.run(...)`)."""

    exit_code: int
    stdout: str
    stderr: str


class ScriptRunner(Protocol):
    """Runs one script of a skill folder with JSON arguments on stdin."""

    def run(self, skill_path: Path, script: str, args_json: str, timeout: float) -> RunResult:
        """Run `skill_path/script`; a timeout yields exit code 124 rather than an exception."""
        ...


def script_command(path: Path) -> list[str]:
    """How to start a script: Python and shell by extension, anything else must be executable."""
    if path.suffix == ".py":
        return [sys.executable, "-I", "-B", str(path)]  # -I: no user site, no PYTHONPATH, no cwd on sys.path
    if path.suffix == ".sh":
        return ["/bin/sh", str(path)]
    return [str(path)]


class SubprocessRunner:
    """Plain subprocess with a timeout, a scrubbed environment and a throwaway working directory.

    TO BE REPLACED BY THE SANDBOX (agent_core/sandbox): this gives no filesystem, network or
    resource isolation; it only keeps the gateway's secrets (environment) away from the script and
    kills the whole process group on timeout. Good enough for `verify` of trusted seed skills.
    """

    def __init__(self, extra_env: dict[str, str] | None = None) -> None:
        self._extra_env = dict(extra_env or {})

    def run(self, skill_path: Path, script: str, args_json: str, timeout: float) -> RunResult:
        """Run the script; see ScriptRunner."""
        path = resolve_script(skill_path, script)
        with tempfile.TemporaryDirectory(prefix="skill-run-") as work:
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "LC_ALL": "C.UTF-8",
                "HOME": work,
                "TMPDIR": work,
                "SKILL_DIR": str(skill_path),
                "PYTHONIOENCODING": "utf-8",
                **self._extra_env,
            }
            proc = subprocess.Popen(
                script_command(path),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=work,
                env=env,
                start_new_session=True,  # its own process group, so a timeout kills children too
            )
            try:
                out, err = proc.communicate(args_json.encode("utf-8"), timeout=timeout)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, err = proc.communicate()
                code, err = 124, err + f"\ntimed out after {timeout:g}s".encode()
        return RunResult(code, _text(out), _text(err))


def _text(data: bytes) -> str:
    return data[:MAX_OUTPUT].decode("utf-8", errors="replace")


def resolve_script(skill_path: Path, script: str) -> Path:
    """`script` inside the skill folder; refuses absolute paths, `..` and anything not a regular file."""
    rel = Path(script)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"script {script!r} must be a path inside the skill folder")
    path = skill_path / rel
    if path.is_symlink() or not path.is_file():
        raise ValueError(f"script {script!r} does not exist in the skill")
    return path


@dataclass(frozen=True)
class Case:
    """One case from a tests/ file."""

    file: str
    name: str
    script: str
    input: dict[str, Any]
    expect: dict[str, Any]
    timeout: float = DEFAULT_TIMEOUT


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case (`failures` empty = passed)."""

    case: Case
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every expectation held."""
        return not self.failures


def _scripts(skill_path: Path) -> list[str]:
    folder = skill_path / "scripts"
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(skill_path).as_posix() for p in folder.iterdir() if p.is_file())


def _case(raw: Any, file: str, number: int, scripts: list[str]) -> Case:
    if not isinstance(raw, dict):
        raise ValueError(f"{file} case {number}: expected a mapping")
    name = str(raw.get("name") or f"case {number}")
    script = raw.get("script") or (scripts[0] if len(scripts) == 1 else None)
    if not isinstance(script, str):
        raise ValueError(f"{file} {name!r}: say which script to run (`script: scripts/...`)")
    args, expect = raw.get("input", {}), raw.get("expect", {})
    if not isinstance(args, dict) or not isinstance(expect, dict):
        raise ValueError(f"{file} {name!r}: `input` and `expect` must be mappings")
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"{file} {name!r}: timeout must be a positive number of seconds")
    return Case(file, name, script, args, expect, float(timeout))


def load_cases(skill_path: Path) -> list[Case]:
    """Every case of every tests/ file, in file order; raises ValueError on a malformed file."""
    folder = skill_path / "tests"
    if not folder.is_dir():
        return []
    scripts = _scripts(skill_path)
    cases: list[Case] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in TEST_SUFFIXES and p.is_file()):
        rel = path.relative_to(skill_path).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"{rel}: cannot be parsed: {exc}") from exc
        items = data.get("cases") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise ValueError(f"{rel}: expected a list of cases or a mapping with `cases`")
        cases += [_case(item, rel, n, scripts) for n, item in enumerate(items, 1)]
    return cases


def _input_problems(case: Case, schema: dict[str, Any] | None) -> list[str]:
    """The case's input against the declared input_schema's required properties (a cheap sanity check).

    Cases that expect a failure exit code may send invalid input on purpose, so they are not checked.
    """
    if not schema or int(case.expect.get("exit_code", 0)) != 0:
        return []
    return [f"input lacks required {key!r}" for key in schema.get("required", []) if key not in case.input]


def run_case(runner: ScriptRunner, skill_path: Path, case: Case, schema: dict[str, Any] | None = None) -> CaseResult:
    """Run one case and check its expectations."""
    started = time.monotonic()
    problems = _input_problems(case, schema)
    if problems:
        return CaseResult(case, problems)
    try:
        code, out, err = runner.run(skill_path, case.script, json.dumps(case.input), case.timeout)
    except (OSError, ValueError) as exc:
        return CaseResult(case, [f"could not run {case.script}: {exc}"], time.monotonic() - started)
    return CaseResult(case, check_output(case.expect, code, out, err), time.monotonic() - started)
