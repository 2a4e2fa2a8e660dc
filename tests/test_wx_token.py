"""Access-token cache: one fetch for many callers, refresh before expiry, stale rejections ignored."""

from __future__ import annotations

import asyncio

import pytest

from adapters.tokens import AccessTokenCache, IssuedToken, TokenError
from adapters.wechat.window import DeliveryCounter, PassiveWindow
from gateway.messages import ChatKind, OutboundMessage, Target, TextPart


class _Issuer:
    def __init__(self, lifetime: float = 7200.0) -> None:
        self.issued = 0
        self.lifetime = lifetime
        self.fail: Exception | None = None

    async def __call__(self) -> IssuedToken:
        await asyncio.sleep(0.01)
        if self.fail is not None:
            raise self.fail
        self.issued += 1
        return IssuedToken(f"T{self.issued}", self.lifetime)


async def test_concurrent_callers_share_one_fetch() -> None:
    issuer = _Issuer()
    cache = AccessTokenCache(issuer)
    tokens = await asyncio.gather(*(cache.get() for _ in range(50)))
    assert set(tokens) == {"T1"} and issuer.issued == 1


async def test_many_rejections_of_the_same_token_refresh_once() -> None:
    issuer = _Issuer()
    cache = AccessTokenCache(issuer)
    stale = await cache.get()
    for _ in range(20):
        cache.invalidate(stale)  # every in-flight call that saw 40001 reports it
    assert await cache.get() == "T2"
    cache.invalidate(stale)  # a late report about the old token must not drop the new one
    assert await cache.get() == "T2" and issuer.issued == 2


async def test_refreshes_before_expiry_using_the_clock() -> None:
    now = [1000.0]
    issuer = _Issuer(lifetime=7200)
    cache = AccessTokenCache(issuer, clock=lambda: now[0])
    assert await cache.get() == "T1"
    now[0] += 7200 - 301
    assert await cache.get() == "T1"
    now[0] += 2  # inside the 300 s margin
    assert await cache.get() == "T2"


async def test_short_lived_tokens_are_still_cached_for_half_their_life() -> None:
    now = [0.0]
    issuer = _Issuer(lifetime=10)
    cache = AccessTokenCache(issuer, clock=lambda: now[0])
    await cache.get()
    now[0] = 4.9
    assert await cache.get() == "T1"
    now[0] = 5.1
    assert await cache.get() == "T2"


async def test_a_refused_credential_is_raised_to_every_waiter_and_retried_later() -> None:
    issuer = _Issuer()
    issuer.fail = TokenError("invalid appsecret", code="40125")
    cache = AccessTokenCache(issuer)
    results = await asyncio.gather(*(cache.get() for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, TokenError) for r in results)
    issuer.fail = None
    assert await cache.get() == "T1"


def _msg(chat: str, in_reply_to: str) -> OutboundMessage:
    target = Target(platform="wechat", bot_id="b", chat_id=chat, chat_kind=ChatKind.DIRECT, in_reply_to=in_reply_to)
    return OutboundMessage(target=target, parts=(TextPart(text="x"),), idempotency_key=f"k-{in_reply_to}")


async def test_passive_window_prefers_the_request_being_answered_and_never_hands_to_a_closed_slot() -> None:
    window = PassiveWindow()
    first = window.open("b", "u1", "m1")
    second = window.open("b", "u1", "m2")
    assert window.hand_over(_msg("u1", "m2"))
    assert await window.wait(second, 0.01) == _msg("u1", "m2")
    assert await window.wait(first, 0.01) is None  # closed at its budget
    assert not window.hand_over(_msg("u1", "m1")) and len(window) == 0


async def test_a_reply_handed_over_as_the_budget_ends_is_not_lost() -> None:
    window = PassiveWindow()
    slot = window.open("b", "u1", "m1")
    assert window.hand_over(_msg("u1", "late"))  # the oldest open request of the chat takes it
    assert await window.wait(slot, 0) == _msg("u1", "late")


def test_delivery_counter_counts_attempts_and_forgets_old_ones() -> None:
    counter = DeliveryCounter(ttl=10, capacity=3)
    assert [counter.record("a", 0), counter.record("a", 1), counter.record("a", 2)] == [1, 2, 3]
    assert counter.record("b", 20) == 1  # "a" expired
    assert counter.record("a", 20) == 1
    for i, key in enumerate("cde"):
        counter.record(key, 21 + i)
    assert counter.record("b", 30) == 1  # evicted by capacity


@pytest.mark.parametrize("code", ["40013", "40125"])
def test_token_error_keeps_the_platform_code(code: str) -> None:
    assert TokenError("x", code=code).code == code
