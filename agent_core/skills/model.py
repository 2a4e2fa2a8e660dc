"""What a skill is, independent of where it is stored or how it is routed.

A skill is a folder with `SKILL.md` (YAML front matter + markdown instructions) and optional
`scripts/` and `tests/`, compatible with the public Agent Skills convention. The router only ever
sees `SkillCard`s (short, cheap to index); full instructions are loaded when a turn opens a skill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SkillCard:
    """The part of a skill that routing looks at."""

    name: str
    description: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkillMeta:
    """Front matter of SKILL.md."""

    name: str
    description: str
    version: str = "0.1.0"
    tags: tuple[str, ...] = ()
    # e.g. "network", "shell", "fs-write", "secrets:GITHUB_TOKEN"
    permissions: tuple[str, ...] = ()
    # roles allowed to run it (empty = everyone)
    audience: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    input_schema: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def card(self) -> SkillCard:
        """The routing view."""
        return SkillCard(self.name, self.description, self.tags)


@dataclass(frozen=True)
class Skill:
    """One version of a skill as stored in the library."""

    meta: SkillMeta
    instructions: str  # the markdown body of SKILL.md
    path: Path  # folder of this version (read-only once published)
    content_hash: str  # sha256 over the folder's files; identifies the version
