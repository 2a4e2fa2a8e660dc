"""The seed library shipped with the code, installed into a fresh skill library.

Seeds are ordinary skills (agent_core/seed_skills/<name>/). `ensure_seeds` is idempotent and
respects the operator: a seed is installed when its name was never installed, and upgraded only
while the live version is still an unmodified seed; a seed someone removed or replaced stays so.
"""

from __future__ import annotations

from pathlib import Path

from agent_core.skills.files import hash_folder
from agent_core.skills.library import SkillLibrary
from agent_core.skills.parse import read_skill_dir

SEED_ROOT = Path(__file__).resolve().parent.parent / "seed_skills"
SEED_AUTHOR = "seed"


def seed_folders(root: Path = SEED_ROOT) -> list[Path]:
    """Every seed skill folder, sorted by name."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "SKILL.md").is_file())


def ensure_seeds(library: SkillLibrary, root: Path = SEED_ROOT) -> list[str]:
    """Install missing seeds and upgrade untouched ones; returns the names that changed."""
    changed: list[str] = []
    for folder in seed_folders(root):
        meta, _ = read_skill_dir(folder)
        versions = library.history(meta.name)
        active = next((v for v in versions if v.active), None)
        if versions and (active is None or active.author != SEED_AUTHOR):
            continue  # removed or replaced by someone: leave it alone
        if active is not None and active.content_hash == hash_folder(folder):
            continue
        reason = "seed library" if not versions else "seed library upgrade"
        library.install(folder, author=SEED_AUTHOR, reason=reason)
        changed.append(meta.name)
    return changed
