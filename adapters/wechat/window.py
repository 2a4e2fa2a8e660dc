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
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.messages import OutboundMessage


@dataclass(eq=False)
class Slot:
    """One request waiting for its passive reply.

    `reply` receives the message (None when the slot closes empty); `written` tells the sender
    whether the response carrying it was really written in time, so a reply is only marked sent
    once it is on the wire and is otherwise kept for the next way out.
    """

    bot_id: str
    chat_id: str
    in_reply_to: str
    deadline: float
    reply: asyncio.Future[OutboundMessage | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    written: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def confirm(self, ok: bool) -> None:
        """Report whether the handed-over reply went out in the HTTP response."""
        if not self.written.done():
            self.written.set_result(ok)


class PassiveWindow:
    """All open slots, per chat, oldest first."""

    def __init__(self, margin: float = 0.3, clock: Callable[[], float] = time.monotonic) -> None:
        self._slots: dict[tuple[str, str], list[Slot]] = {}
        self._margin = margin  # a slot this close to its deadline takes nothing: writing needs time too
        self._clock = clock

    def open(self, bot_id: str, chat_id: str, in_reply_to: str, deadline: float) -> Slot:
        """Register a request before its message is journaled, so even an instant turn finds it."""
        slot = Slot(bot_id, chat_id, in_reply_to, deadline)
        self._slots.setdefault((bot_id, chat_id), []).append(slot)
        return slot

    def _remove(self, slot: Slot) -> None:
        slots = self._slots.get((slot.bot_id, slot.chat_id))
        if slots is not None and slot in slots:
            slots.remove(slot)
            if not slots:
                del self._slots[(slot.bot_id, slot.chat_id)]

    def close(self, slot: Slot) -> OutboundMessage | None:
        """Stop accepting replies for `slot`; returns the reply if one was handed over meanwhile."""
        self._remove(slot)
        if not slot.reply.done():
            slot.reply.set_result(None)
            slot.confirm(False)
        return slot.reply.result()

    def hand_over(self, msg: OutboundMessage) -> Slot | None:
        """Give `msg` to an open request of its chat with time left to write it; None when there is none."""
        target = msg.target
        now = self._clock()
        slots = [s for s in self._slots.get((target.bot_id, target.chat_id), []) if s.deadline - now > self._margin]
        if not slots:
            return None
        chosen = next((s for s in slots if s.in_reply_to == target.in_reply_to), slots[0])
        self._remove(chosen)
        chosen.reply.set_result(msg)
        return chosen

    async def wait(self, slot: Slot) -> OutboundMessage | None:
        """The reply handed to `slot` before its deadline, else None (and the slot is closed either way)."""
        remaining = slot.deadline - self._clock()
        if remaining > 0:
            try:
                async with asyncio.timeout(remaining):
                    await asyncio.shield(slot.reply)
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
