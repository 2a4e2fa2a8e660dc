"""Per-user memory: short notes a user asked the agent to keep across conversations.

The contract lives here, apart from any storage, so the agent and the gateway agree on the rules
(dedupe, caps, ordering) while SQLite or a test double does the keeping. Notes are the user's own
words, stored as data: whoever shows them to a model must present them as untrusted text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# A note is a fact, not a document: longer text is trimmed so one note cannot crowd the prompt.
MAX_NOTE_CHARS = 500
# Bounds storage and prompt cost per user; past it the oldest note goes (recent facts win).
MAX_NOTES_PER_USER = 200


@dataclass(frozen=True)
class MemoryNote:
    """One stored note; `id` is what a user (through the model) names to forget it."""

    id: int
    user_key: str
    text: str
    created_at: float
    source: str = "remember"


def clean_note(text: str, max_chars: int = MAX_NOTE_CHARS) -> str:
    """The text as stored: one line (a note cannot forge prompt structure with newlines), trimmed."""
    return " ".join(text.split())[:max_chars].rstrip()


def dedupe_key(cleaned: str) -> str:
    """What makes two notes the same: the model often re-saves a fact with other case or spacing."""
    return cleaned.casefold()


class MemoryStore(Protocol):
    """Keeps each user's notes; every operation is scoped to one user_key, so users never see each other's."""

    async def add(self, user_key: str, text: str, *, now: float, source: str = "remember") -> MemoryNote | None:
        """The stored note, or None when the user already has the same note (nothing changes then).

        Raises ValueError for text that is empty once cleaned. May evict the user's oldest note
        to stay within the per-user cap.
        """
        ...

    async def recent(self, user_key: str, limit: int) -> list[MemoryNote]:
        """The user's newest `limit` notes, oldest first (newest last), the order a prompt reads them in."""
        ...

    async def relevant(self, user_key: str, query: str, limit: int) -> list[MemoryNote]:
        """The user's notes closest in meaning to `query`, closest first; [] where there is no semantic index."""
        ...

    async def forget(self, user_key: str, note_id: int) -> bool:
        """Whether a note was deleted; another user's note id is treated as unknown."""
        ...

    async def count(self, user_key: str) -> int:
        """How many notes the user has."""
        ...
