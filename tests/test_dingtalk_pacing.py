"""Per-conversation pacing: the 19th message within a minute waits instead of getting the robot throttled."""

from __future__ import annotations

import pytest

from adapters.dingtalk.pacing import ConversationPacer
from gateway.errors import RateLimited


def test_each_conversation_gets_its_limit_per_sliding_minute() -> None:
    now = [1000.0]
    pacer = ConversationPacer(18, clock=lambda: now[0])
    for _ in range(18):
        pacer.check("cid-a")
        pacer.sent("cid-a")
        now[0] += 1.0  # 18 sends over 18 s
    with pytest.raises(RateLimited) as held:
        pacer.check("cid-a")
    assert held.value.retry_after == pytest.approx(42.0)  # until the first send leaves the window
    pacer.check("cid-b")  # another conversation is not affected
    now[0] += 42.0
    pacer.check("cid-a")  # the oldest send has left the window


def test_idle_conversations_are_forgotten() -> None:
    now = [0.0]
    pacer = ConversationPacer(1, clock=lambda: now[0], max_conversations=3)
    for cid in ("a", "b", "c", "d"):
        pacer.sent(cid)
        now[0] += 30.0
    assert set(pacer._sent) == {"c", "d"}  # a and b sent nothing for a whole window
    with pytest.raises(RateLimited):
        pacer.check("d")
