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
        self.calls = 0

    async def __call__(self) -> IssuedToken:
        self.calls += 1
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
    now = [0.0]
    issuer = _Issuer()
    issuer.fail = TokenError("invalid appsecret", code="40125")
    cache = AccessTokenCache(issuer, clock=lambda: now[0])
    results = await asyncio.gather(*(cache.get() for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, TokenError) for r in results)
    assert issuer.calls == 1  # the waiters share the failed fetch instead of each trying again
    issuer.fail = None
    with pytest.raises(TokenError):
        await cache.get()  # still remembered for a few seconds
    now[0] += 6
    assert await cache.get() == "T1" and issuer.calls == 2


def _msg(chat: str, in_reply_to: str) -> OutboundMessage:
    target = Target(platform="wechat", bot_id="b", chat_id=chat, chat_kind=ChatKind.DIRECT, in_reply_to=in_reply_to)
    return OutboundMessage(target=target, parts=(TextPart(text="x"),), idempotency_key=f"k-{in_reply_to}")


async def test_passive_window_prefers_the_request_being_answered_and_never_hands_to_a_closed_slot() -> None:
    now = [0.0]
    window = PassiveWindow(margin=0.3, clock=lambda: now[0])
    first = window.open("b", "u1", "m1", deadline=4.5)
    second = window.open("b", "u1", "m2", deadline=4.5)
    assert window.hand_over(_msg("u1", "m2")) is second
    assert await window.wait(second) == _msg("u1", "m2")
    now[0] = 5.0
    assert await window.wait(first) is None  # past its deadline: closed empty
    assert window.hand_over(_msg("u1", "m1")) is None and len(window) == 0
    assert first.written.done() and first.written.result() is False


async def test_a_slot_about_to_expire_takes_nothing() -> None:
    now = [0.0]
    window = PassiveWindow(margin=0.3, clock=lambda: now[0])
    slot = window.open("b", "u1", "m1", deadline=4.5)
    now[0] = 4.3  # 0.2 s left: not enough to write a response before WeChat gives up
    assert window.hand_over(_msg("u1", "m1")) is None
    window.close(slot)


async def test_a_reply_handed_over_before_the_wait_is_returned_and_shutdown_releases_waiters() -> None:
    window = PassiveWindow()
    loop_now = asyncio.get_running_loop().time
    slot = window.open("b", "u1", "m1", deadline=loop_now() + 60)
    assert window.hand_over(_msg("u1", "late")) is slot
    assert await window.wait(slot) == _msg("u1", "late")

    waiting = window.open("b", "u2", "m2", deadline=loop_now() + 60)
    task = asyncio.create_task(window.wait(waiting))
    await asyncio.sleep(0.01)
    window.close_all()
    assert await task is None  # answered at once, no CancelledError inside the request handler


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
