"""Checks a skill test case makes on a script's output.

`expect` is a mapping; every key present must hold:
    exit_code: 0                      the process exit code (default 0 when `expect` has no exit_code)
    contains / not_contains: str|[str] substrings of stdout
    equals: str                       stdout with surrounding whitespace removed
    stderr_contains: str|[str]        substrings of stderr
    json: {"$.a.b[0]": value}         stdout parsed as JSON; the value at each path equals `value`
    json_contains: {"$.a": "text"}    ... the value at each path, as text, contains `text`
    json_exists: ["$.a", ...]         ... each path exists
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

PATH_TOKEN = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]|\[\"([^\"]+)\"\]|\['([^']+)'\]")
KNOWN_KEYS = frozenset(
    {"exit_code", "contains", "not_contains", "equals", "stderr_contains", "json", "json_contains", "json_exists"}
)
_MISSING = object()


class PathError(ValueError):
    """A JSON path that is malformed or does not resolve."""


def json_path(doc: Any, path: str) -> Any:
    """Resolve `$.a.b[0]["c d"]` (the leading `$` is optional) in a parsed JSON document."""
    rest = path.strip()
    rest = rest[1:] if rest.startswith("$") else rest
    if rest and not rest.startswith((".", "[")):
        rest = "." + rest
    value = doc
    pos = 0
    while pos < len(rest):
        match = PATH_TOKEN.match(rest, pos)
        if match is None:
            raise PathError(f"bad JSON path {path!r} at {rest[pos:]!r}")
        key = match.group(1) or match.group(3) or match.group(4)
        if key is not None:
            if not isinstance(value, dict) or key not in value:
                raise PathError(f"{path}: no key {key!r}")
            value = value[key]
        else:
            index = int(match.group(2))
            if not isinstance(value, list) or index >= len(value):
                raise PathError(f"{path}: no item [{index}]")
            value = value[index]
        pos = match.end()
    return value


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _short(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def _text_checks(expect: Mapping[str, Any], stdout: str, stderr: str) -> list[str]:
    failures = [f"stdout lacks {s!r}" for s in _as_list(expect.get("contains", [])) if s not in stdout]
    failures += [f"stdout contains {s!r}" for s in _as_list(expect.get("not_contains", [])) if s in stdout]
    failures += [f"stderr lacks {s!r}" for s in _as_list(expect.get("stderr_contains", [])) if s not in stderr]
    if "equals" in expect and stdout.strip() != str(expect["equals"]).strip():
        failures.append(f"stdout is {_short(stdout)!r}, expected {expect['equals']!r}")
    return failures


def _json_checks(expect: Mapping[str, Any], stdout: str) -> list[str]:
    if not any(k in expect for k in ("json", "json_contains", "json_exists")):
        return []
    try:
        doc = json.loads(stdout)
    except json.JSONDecodeError as exc:
        return [f"stdout is not JSON ({exc}): {_short(stdout)!r}"]
    failures: list[str] = []

    def lookup(path: str) -> Any:
        try:
            return json_path(doc, path)
        except PathError as exc:
            failures.append(str(exc))
            return _MISSING

    for path, wanted in dict(expect.get("json") or {}).items():
        got = lookup(str(path))
        if got is not _MISSING and got != wanted:
            failures.append(f"{path} is {got!r}, expected {wanted!r}")
    for path, wanted in dict(expect.get("json_contains") or {}).items():
        got = lookup(str(path))
        if got is _MISSING:
            continue
        text = got if isinstance(got, str) else json.dumps(got, ensure_ascii=False)
        if str(wanted) not in text:
            failures.append(f"{path} is {_short(text)!r}, which lacks {wanted!r}")
    for path in _as_list(expect.get("json_exists", [])):
        lookup(path)
    return failures


def check_output(expect: Mapping[str, Any], exit_code: int, stdout: str, stderr: str) -> list[str]:
    """Every unmet expectation, as readable lines (empty = the case passed)."""
    known = ", ".join(sorted(KNOWN_KEYS))
    failures = [f"unknown expectation {key!r} (known: {known})" for key in expect if key not in KNOWN_KEYS]
    wanted_code = int(expect.get("exit_code", 0))
    if exit_code != wanted_code:
        failures.append(f"exit code {exit_code}, expected {wanted_code}; stderr: {_short(stderr)!r}")
    return failures + _text_checks(expect, stdout, stderr) + _json_checks(expect, stdout)
