"""SKILL.md → SkillMeta + instructions, with every problem reported at once.

The format is the public Agent Skills convention (YAML front matter with `name` and `description`,
markdown body = instructions) so skills written for other agents install unchanged: keys we do not
interpret (`license`, `compatibility`, `allowed-tools`, `metadata`, anything else) are kept verbatim in
`SkillMeta.extra`. Our own keys (`version`, `tags`, `permissions`, `audience`, `requirements`,
`input_schema`) are optional, and validated strictly because the sandbox and router act on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agent_core.skills.model import SkillMeta

SKILL_FILE = "SKILL.md"
MAX_NAME = 64
MAX_DESCRIPTION = 1024
MAX_COMPATIBILITY = 500
MAX_SKILL_MD_BYTES = 256 * 1024

NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
# Fixed permissions plus `secrets:NAME`, where NAME is an environment-variable style identifier.
BASE_PERMISSIONS = frozenset({"network", "shell", "fs-write"})
SECRET_PERMISSION_RE = re.compile(r"^secrets:[A-Z][A-Z0-9_]{0,63}$")
ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TAG_RE = re.compile(r"^[^\s,]{1,40}$")
# A PEP 508 subset: name[extras] plus optional version clauses and marker. URLs, paths and pip options
# (`-e`, `--index-url`) are refused: a skill must not choose where packages come from.
REQUIREMENT_RE = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
    r"(?:\[[A-Za-z0-9._-]+(?:\s*,\s*[A-Za-z0-9._-]+)*\])?"
    r"\s*(?:(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+"
    r"(?:\s*,\s*(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*)?"
    r"\s*(?:;\s*[^@]+)?$"
)
OUR_KEYS = frozenset(
    {"name", "description", "version", "tags", "permissions", "audience", "requirements", "input_schema"}
)


class SkillError(Exception):
    """A skill folder that cannot be used; `problems` lists every reason, one line each."""

    def __init__(self, problems: list[str], where: str = "") -> None:
        self.problems = problems
        prefix = f"{where}: " if where else ""
        super().__init__(prefix + "; ".join(problems))


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split SKILL.md into its YAML mapping and the markdown body (the instructions)."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    lines = text.split("\n")
    if not lines or lines[0].strip() != "---":
        raise SkillError([f"{SKILL_FILE} must start with a '---' line opening the YAML front matter"])
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise SkillError([f"{SKILL_FILE}: the front matter is not closed by a '---' line"]) from None
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError as exc:
        raise SkillError([f"{SKILL_FILE}: the front matter is not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise SkillError([f"{SKILL_FILE}: the front matter must be a mapping of keys to values"])
    body = "\n".join(lines[end + 1 :]).strip("\n")
    return {str(k): v for k, v in data.items()}, body


def _string_list(value: Any, key: str, problems: list[str]) -> tuple[str, ...]:
    """A YAML list of strings; a single string is split on commas/whitespace (people write both)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(part for part in re.split(r"[,\s]+", value) if part)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value)
    problems.append(f"{key}: expected a list of strings, got {value!r}")
    return ()


def _check_name(value: Any, problems: list[str]) -> str:
    if not isinstance(value, str) or not value:
        problems.append("name: required (lowercase letters, digits and hyphens, at most 64 characters)")
        return ""
    if len(value) > MAX_NAME:
        problems.append(f"name: {len(value)} characters, at most {MAX_NAME} allowed")
    if not NAME_RE.match(value):
        problems.append(
            f"name: {value!r} must be lowercase letters, digits and single hyphens, not starting or ending with one"
        )
    return value


def _check_description(value: Any, problems: list[str]) -> str:
    if not isinstance(value, str) or not value.strip():
        problems.append("description: required (what the skill does and when to use it)")
        return ""
    if len(value) > MAX_DESCRIPTION:
        problems.append(f"description: {len(value)} characters, at most {MAX_DESCRIPTION} allowed")
    return value.strip()


def _check_version(data: Mapping[str, Any], problems: list[str]) -> str:
    """Top-level `version`, else the public convention's `metadata.version`; numbers become strings."""
    value = data.get("version")
    metadata = data.get("metadata")
    if value is None and isinstance(metadata, dict):
        value = metadata.get("version")
    if value is None:
        return "0.1.0"
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append(f"version: expected a string such as '1.2.0', got {value!r}")
        return "0.1.0"
    text = str(value).strip()
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,39}$", text):
        problems.append(f"version: {text!r} is not a version label (letters, digits, '.', '_', '+', '-')")
    return text


def _check_items(items: tuple[str, ...], key: str, valid: Any, hint: str, problems: list[str]) -> None:
    for item in items:
        if not valid(item):
            problems.append(f"{key}: {item!r} {hint}")


def _permission_ok(item: str) -> bool:
    return item in BASE_PERMISSIONS or bool(SECRET_PERMISSION_RE.match(item))


def _check_schema(value: Any, problems: list[str]) -> dict[str, Any] | None:
    """A JSON Schema describing the script's input object; only its shape is checked here."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append("input_schema: expected a JSON Schema object (a mapping)")
        return None
    if value.get("type", "object") != "object":
        problems.append("input_schema: the top-level type must be 'object' (scripts receive a JSON object)")
    for key in ("properties",):
        if key in value and not isinstance(value[key], dict):
            problems.append(f"input_schema.{key}: expected a mapping")
    required = value.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        problems.append("input_schema.required: expected a list of property names")
    return {str(k): v for k, v in value.items()}


def _check_public_keys(data: Mapping[str, Any], problems: list[str]) -> None:
    """Constraints the public convention puts on its optional keys (kept in `extra`)."""
    compatibility = data.get("compatibility")
    if compatibility is not None and (not isinstance(compatibility, str) or len(compatibility) > MAX_COMPATIBILITY):
        problems.append(f"compatibility: expected a string of at most {MAX_COMPATIBILITY} characters")
    if "metadata" in data and not isinstance(data["metadata"], dict):
        problems.append("metadata: expected a mapping of keys to values")
    if "license" in data and not isinstance(data["license"], str):
        problems.append("license: expected a string (a license name or a bundled file)")


def parse_meta(data: Mapping[str, Any]) -> SkillMeta:
    """Validate front matter; raises SkillError listing every problem found."""
    problems: list[str] = []
    name = _check_name(data.get("name"), problems)
    description = _check_description(data.get("description"), problems)
    version = _check_version(data, problems)
    tags = _string_list(data.get("tags"), "tags", problems)
    _check_items(tags, "tags", TAG_RE.match, "is not a tag (1-40 characters, no spaces or commas)", problems)
    permissions = _string_list(data.get("permissions"), "permissions", problems)
    known = ", ".join(sorted(BASE_PERMISSIONS)) + ", secrets:NAME"
    _check_items(permissions, "permissions", _permission_ok, f"is not a known permission ({known})", problems)
    audience = _string_list(data.get("audience"), "audience", problems)
    _check_items(audience, "audience", ROLE_RE.match, "is not a role name (lowercase, e.g. 'admin')", problems)
    requirements = data.get("requirements")
    reqs: tuple[str, ...] = ()
    if requirements is not None:
        if isinstance(requirements, list) and all(isinstance(r, str) for r in requirements):
            reqs = tuple(r.strip() for r in requirements)
        else:
            problems.append("requirements: expected a list of pip requirement strings such as 'httpx>=0.27'")
    _check_items(reqs, "requirements", REQUIREMENT_RE.match, "is not a pip name[==version] specifier", problems)
    input_schema = _check_schema(data.get("input_schema"), problems)
    _check_public_keys(data, problems)
    if problems:
        raise SkillError(problems, where=name or SKILL_FILE)
    extra = {k: v for k, v in data.items() if k not in OUR_KEYS}
    return SkillMeta(
        name=name,
        description=description,
        version=version,
        tags=tags,
        permissions=permissions,
        audience=audience,
        requirements=reqs,
        input_schema=input_schema,
        extra=extra,
    )


def read_skill_dir(folder: Path) -> tuple[SkillMeta, str]:
    """Parse `folder/SKILL.md` into its metadata and instructions."""
    path = folder / SKILL_FILE
    if path.is_symlink() or not path.is_file():
        raise SkillError([f"{SKILL_FILE} not found (a skill is a folder with a {SKILL_FILE} file)"], where=str(folder))
    if path.stat().st_size > MAX_SKILL_MD_BYTES:
        raise SkillError([f"{SKILL_FILE} is larger than {MAX_SKILL_MD_BYTES // 1024} KB"], where=str(folder))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SkillError([f"{SKILL_FILE} is not UTF-8 text: {exc}"], where=str(folder)) from exc
    data, body = split_front_matter(text)
    return parse_meta(data), body
