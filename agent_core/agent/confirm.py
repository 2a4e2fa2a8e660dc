"""Confirmation in chat for destructive skills: the user, not the model, says yes.

A skill whose front matter has `confirm: true` is never run on the model's word alone. The first
`run_skill` call parks the exact action (skill, script, arguments) under a short code and the model
tells the user to reply `confirm <code>` (or `确认 <code>`). Only that user's matching reply, before the
code expires, runs the parked action, exactly as it was parked; a code is single-use.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CONFIRM_RE = re.compile(r"^\s*(?:confirm|确认)\s+([0-9a-f]{6})\s*[.!。！]?\s*$", re.IGNORECASE)
DEFAULT_TTL = 300.0
MAX_PENDING_PER_USER = 5


@dataclass(frozen=True)
class PendingAction:
    """A destructive run waiting for the user's yes."""

    code: str
    skill: str
    script: str
    args_json: str
    expires_at: float
    content_hash: str = ""  # the exact version the user was told about


class Confirmations:
    """Parked actions per user (in memory: a restart expires them, which is the safe direction)."""

    def __init__(self, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._pending: dict[str, dict[str, PendingAction]] = {}
        self._lock = threading.Lock()

    def park(self, user_key: str, skill: str, script: str, args_json: str, content_hash: str = "") -> PendingAction:
        """Remember an action and return it with its code."""
        with self._lock:
            self._prune(user_key)
            expires = self._clock() + self.ttl
            action = PendingAction(secrets.token_hex(3), skill, script, args_json, expires, content_hash)
            actions = self._pending.setdefault(user_key, {})
            while len(actions) >= MAX_PENDING_PER_USER:  # the oldest goes: a model cannot park without bound
                del actions[next(iter(actions))]
            actions[action.code] = action
            return action

    def take(self, user_key: str, text: str) -> PendingAction | None:
        """The action `text` confirms for this user (removed: single use), or None."""
        match = CONFIRM_RE.match(text)
        if match is None:
            return None
        with self._lock:
            self._prune(user_key)
            return self._pending.get(user_key, {}).pop(match.group(1).lower(), None)

    def is_confirmation(self, text: str) -> bool:
        """Whether `text` looks like a confirmation reply at all (valid or not)."""
        return CONFIRM_RE.match(text) is not None

    def has_pending(self, user_key: str) -> bool:
        """Whether this user has any action waiting (a look-alike message is then answered as a code)."""
        with self._lock:
            self._prune(user_key)
            return bool(self._pending.get(user_key))

    def _prune(self, user_key: str) -> None:
        now = self._clock()
        actions = self._pending.get(user_key)
        if actions is None:
            return
        for code in [c for c, a in actions.items() if a.expires_at <= now]:
            del actions[code]
        if not actions:
            del self._pending[user_key]
