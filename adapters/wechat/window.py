"""Open callback requests that can still carry a reply in their HTTP response (a passive reply).

A passive reply is free (no API call, no quota) and the only way an account without the
customer-service permission can answer at all, but it must be written within WeChat's 5 s.
The handler opens a slot before journaling; the sender hands a reply to a slot of the same chat
(preferring the request it answers); a slot past its budget is closed, so nothing is ever handed
to a connection WeChat already gave up on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field

from gateway.messages import OutboundMessage


@dataclass(eq=False)
class Slot:
    """One request waiting for its passive reply."""

    bot_id: str
    chat_id: str
    in_reply_to: str
    future: asyncio.Future[OutboundMessage] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PassiveWindow:
    """All open slots, per chat, oldest first."""

    def __init__(self) -> None:
        self._slots: dict[tuple[str, str], list[Slot]] = {}

    def open(self, bot_id: str, chat_id: str, in_reply_to: str) -> Slot:
        """Register a request before its message is journaled, so even an instant turn finds it."""
        slot = Slot(bot_id, chat_id, in_reply_to)
        self._slots.setdefault((bot_id, chat_id), []).append(slot)
        return slot

    def close(self, slot: Slot) -> OutboundMessage | None:
        """Stop accepting replies for `slot`; returns the reply if one was handed over meanwhile."""
        slots = self._slots.get((slot.bot_id, slot.chat_id))
        if slots is not None and slot in slots:
            slots.remove(slot)
            if not slots:
                del self._slots[(slot.bot_id, slot.chat_id)]
        if slot.future.done() and not slot.future.cancelled():
            return slot.future.result()
        slot.future.cancel()
        return None

    def hand_over(self, msg: OutboundMessage) -> bool:
        """Give `msg` to an open request of its chat; False when none is open."""
        target = msg.target
        slots = self._slots.get((target.bot_id, target.chat_id))
        if not slots:
            return False
        chosen = next((s for s in slots if s.in_reply_to == target.in_reply_to), slots[0])
        slots.remove(chosen)
        if not slots:
            del self._slots[(target.bot_id, target.chat_id)]
        chosen.future.set_result(msg)
        return True

    async def wait(self, slot: Slot, seconds: float) -> OutboundMessage | None:
        """The reply handed to `slot` within `seconds`, else None (and the slot is closed either way)."""
        if seconds > 0:
            try:
                async with asyncio.timeout(seconds):
                    await asyncio.shield(slot.future)
            except TimeoutError:
                pass
        return self.close(slot)

    def close_all(self) -> None:
        """Shutdown: every waiting request answers now; their replies go out by API or on the next request."""
        for slots in list(self._slots.values()):
            for slot in list(slots):
                self.close(slot)

    def __len__(self) -> int:
        return sum(len(s) for s in self._slots.values())


class DeliveryCounter:
    """How often WeChat has delivered each message (first attempt = 1), remembered for a few minutes."""

    def __init__(self, ttl: float = 120.0, capacity: int = 50_000) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._seen: collections.OrderedDict[str, tuple[int, float]] = collections.OrderedDict()

    def record(self, key: str, now: float | None = None) -> int:
        """Count one delivery of `key` and return its attempt number."""
        now = time.monotonic() if now is None else now
        while self._seen:
            oldest_seen = next(iter(self._seen.values()))[1]
            if len(self._seen) < self._capacity and oldest_seen >= now - self._ttl:
                break
            self._seen.popitem(last=False)
        count = self._seen.pop(key, (0, now))[0] + 1
        self._seen[key] = (count, now)
        return count
