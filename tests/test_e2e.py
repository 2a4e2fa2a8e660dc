"""End to end over real sockets: webhook -> journal -> bus -> turn (fake LLM via litellm) -> outbox -> callback."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp

from gateway.app import Runtime
from tests.conftest import BOT_SECRET, ENV, RuntimeFactory
from tests.fakes.fake_llm import ErrorReply, FakeLLM
from tests.fakes.webhook_peer import CallbackReceiver, Reply, make_payload, send_signed


def url(runtime: Runtime, bot: str = "ops") -> str:
    return f"http://127.0.0.1:{runtime.port}/webhooks/webhook/{bot}"


async def post(runtime: Runtime, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        return await send_signed(session, url(runtime), BOT_SECRET, payload)


async def test_message_round_trip(runtime_factory: RuntimeFactory, receiver: CallbackReceiver) -> None:
    async with runtime_factory() as rt:
        status, body = await post(rt, make_payload("m1", "c1", "alice", "hello there"))
        assert status == 200 and body["duplicate"] is False
        [delivery] = await receiver.async_wait_visible(1)
    assert delivery.body["text"] == "echo: hello there"
    assert delivery.body["chat_id"] == "c1"
    assert delivery.body["in_reply_to"] == "m1"
    assert delivery.headers.get("Idempotency-Key") == delivery.idempotency_key


async def test_history_reaches_the_model_in_order(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    async with runtime_factory() as rt:
        for i, text in enumerate(["first", "second", "third"]):
            await post(rt, make_payload(f"h{i}", "c1", "alice", text))
            await receiver.async_wait_visible(i + 1)
    last = fake_llm.chat_requests()[-1].messages
    contents = [m["content"] for m in last if m["role"] != "system"]
    assert contents == ["first", "echo: first", "second", "echo: second", "third"]


async def test_same_message_three_times_concurrently_gives_one_turn_and_one_reply(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    async with runtime_factory() as rt:
        payload = make_payload("dup-1", "c1", "bob", "once please")
        results = await asyncio.gather(*(post(rt, payload) for _ in range(3)))
        assert [s for s, _ in results] == [200, 200, 200]
        assert sorted(b["duplicate"] for _, b in results) == [False, True, True]
        await receiver.async_wait_visible(1)
        await asyncio.wait_for(rt.wait_quiet(5), 10)
        await asyncio.sleep(0.2)
    assert len(fake_llm.chat_requests()) == 1
    assert len(receiver.deliveries) == 1


async def test_fifty_messages_from_one_user_are_answered_in_order(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver
) -> None:
    async with runtime_factory() as rt:
        for i in range(50):
            status, _ = await post(rt, make_payload(f"o{i}", "c1", "carol", f"msg {i}"))
            assert status == 200
        visible = await receiver.async_wait_visible(50, seconds=60)
    assert [d.body["text"] for d in visible] == [f"echo: msg {i}" for i in range(50)]


async def test_two_hundred_users_are_served_concurrently(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    fake_llm.latency = 0.2
    async with runtime_factory() as rt:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(post(rt, make_payload(f"p{u}", f"c{u}", f"user{u}", f"hi {u}")) for u in range(200))
        )
        assert all(s == 200 for s, _ in results)
        visible = await receiver.async_wait_visible(200, seconds=60)
        elapsed = loop.time() - started
    assert sorted(d.body["text"] for d in visible) == sorted(f"echo: hi {u}" for u in range(200))
    # 200 turns of 0.2 s each would take 40 s one after another; the cap of 32 runs them side by side.
    assert elapsed < 20


async def test_users_never_see_each_others_history(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    async with runtime_factory() as rt:
        await post(rt, make_payload("a1", "g1", "alice", "alice secret 42", chat_type="group"))
        await receiver.async_wait_visible(1)
        await post(rt, make_payload("b1", "g1", "bob", "what did alice say?", chat_type="group"))
        await receiver.async_wait_visible(2)
    bob_request = fake_llm.chat_requests()[-1].messages
    assert not any("alice secret 42" in str(m["content"]) for m in bob_request)


async def test_llm_failure_becomes_a_short_honest_reply(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    fake_llm.enqueue(ErrorReply(status=500, body='{"error": {"message": "upstream exploded"}}'))
    async with runtime_factory() as rt:
        await post(rt, make_payload("e1", "c1", "dave", "hello"))
        [delivery] = await receiver.async_wait_visible(1)
    text = delivery.body["text"]
    assert "Traceback" not in text and "upstream exploded" not in text
    assert len(text) < 300
    assert ENV["TEST_LLM_KEY"] not in text


async def test_without_llm_key_the_reply_says_what_to_configure(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    env = {k: v for k, v in ENV.items() if k != "TEST_LLM_KEY"}
    async with runtime_factory(env=env) as rt:
        await post(rt, make_payload("n1", "c1", "erin", "hello"))
        [delivery] = await receiver.async_wait_visible(1)
    assert "TEST_LLM_KEY" in delivery.body["text"]
    assert fake_llm.chat_requests() == []


async def test_callback_500_then_429_is_retried_and_delivered_once(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver
) -> None:
    receiver.fail_next(2, 500)
    receiver.fail_next(1, 429, headers={"Retry-After": "1"})
    async with runtime_factory(outbox={"base_backoff": 0.05, "max_backoff": 2.0}) as rt:
        await post(rt, make_payload("r1", "c1", "frank", "retry me"))
        [delivery] = await receiver.async_wait_visible(1, seconds=15)
        body, _ = await rt.render_metrics()
    assert [a.status for a in receiver.attempts] == [500, 500, 429, 200]
    waited = receiver.attempts[3].received_at - receiver.attempts[2].received_at
    assert waited >= 1.0, "Retry-After: 1 must be honoured"
    assert delivery.body["text"] == "echo: retry me"
    assert b'switchboard_send_errors_total{code="500",platform="webhook"} 2.0' in body
    assert b'switchboard_send_errors_total{code="429",platform="webhook"} 1.0' in body


async def test_callback_timeout_is_retried(runtime_factory: RuntimeFactory, receiver: CallbackReceiver) -> None:
    receiver.delay_next(1, 3.0)
    async with runtime_factory() as rt:
        await post(rt, make_payload("t1", "c1", "gina", "slow peer"))
        for _ in range(100):
            if any(a.status == 200 for a in receiver.attempts[1:]):
                break
            await asyncio.sleep(0.1)
    keys = [a.idempotency_key for a in receiver.attempts]
    assert len(keys) >= 2 and len(set(keys)) == 1, "the resend reuses the idempotency key"
    assert len(receiver.visible()) == 1


async def test_permanent_error_goes_to_dead_letters(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver
) -> None:
    receiver.set_policy(lambda key, body: Reply(status=400, body="bad chat"))
    async with runtime_factory() as rt:
        await post(rt, make_payload("d1", "c1", "hank", "doomed"))
        for _ in range(100):
            if (await rt.outbox.stats()).dead:
                break
            await asyncio.sleep(0.05)
        letters = await rt.outbox.dead_letters()
        body, _ = await rt.render_metrics()
    assert len(receiver.attempts) == 1, "a permanent error is not retried"
    assert [(d.platform, d.code) for d in letters] == [("webhook", "400")]
    assert b"switchboard_outbox_dead 1.0" in body


async def test_deadline_turns_retries_into_a_dead_letter(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver
) -> None:
    receiver.set_policy(lambda key, body: Reply(status=503))
    async with runtime_factory(outbox={"deadline_seconds": 2.0}) as rt:
        await post(rt, make_payload("dl1", "c1", "ivy", "never"))
        for _ in range(400):  # generous: a loaded CI machine may be slow to start the LLM worker
            if (await rt.outbox.stats()).dead:
                break
            await asyncio.sleep(0.05)
        [letter] = await rt.outbox.dead_letters()
    assert "deadline" in letter.reason
    assert len(receiver.attempts) >= 2


async def test_ops_endpoints(runtime_factory: RuntimeFactory) -> None:
    async with runtime_factory() as rt, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{rt.port}"
        async with s.get(f"{base}/healthz") as r:
            assert r.status == 200
        async with s.get(f"{base}/readyz") as r:
            ready = await r.json()
            assert r.status == 200 and ready["checks"]["database"] and ready["checks"]["adapter:webhook"]
        async with s.get(f"{base}/metrics") as r:
            text = await r.text()
    for name in (
        "switchboard_inbound_total",
        "switchboard_queue_depth",
        "switchboard_turn_latency_seconds",
        "switchboard_outbox_pending",
        "switchboard_event_loop_lag_seconds",
    ):
        assert name in text


async def test_unfinished_turns_are_resumed_at_start(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    fake_llm.latency = 30  # the first runtime never finishes its turn
    async with runtime_factory(server={"drain_seconds": 0.2}) as rt:
        status, _ = await post(rt, make_payload("z1", "c1", "judy", "survive me"))
        assert status == 200
        await asyncio.sleep(0.3)
    assert receiver.visible() == []
    fake_llm.latency = 0
    async with runtime_factory() as rt:
        [delivery] = await receiver.async_wait_visible(1, seconds=15)
        status, body = await post(rt, make_payload("z1", "c1", "judy", "survive me"))
        assert body["duplicate"] is True
    assert delivery.body["text"] == "echo: survive me"


async def journal_as_if_interrupted(
    runtime_factory: RuntimeFactory, messages: list[tuple[str, str, str]], attempts: int
) -> None:
    """Leave (message id, user, text) messages in the journal as earlier runs that died `attempts` times
    inside their turns would have."""
    from gateway.messages import ChatKind, InboundMessage, session_key_for
    from gateway.store.migrations import MIGRATIONS
    from gateway.store.sqlite_db import SqliteDatabase
    from gateway.store.sqlite_journal import SqliteJournal

    async with runtime_factory() as rt:
        path = rt.settings.database_path
    db = SqliteDatabase(path)
    await db.open(MIGRATIONS)
    journal = SqliteJournal(db)
    for message_id, user, text in messages:
        msg = InboundMessage(
            platform="webhook",
            bot_id="ops",
            platform_msg_id=message_id,
            chat_id=f"dm-{user}",
            chat_kind=ChatKind.DIRECT,
            sender_id=user,
            text=text,
        )
        appended = await journal.append(msg, session_key_for(msg))
        for _ in range(attempts):
            await journal.begin_attempt([appended.inbound_id])
    await db.close()


async def test_message_that_keeps_crashing_turns_gets_an_apology_not_a_loop(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    from gateway.turns import POISON_REPLY

    await journal_as_if_interrupted(runtime_factory, [("poison", "mallory", "boom")], attempts=5)
    async with runtime_factory():
        [delivery] = await receiver.async_wait_visible(1)
    assert delivery.body["text"] == POISON_REPLY
    assert fake_llm.chat_requests() == [], "the poisonous turn is not run again"


async def test_messages_that_were_running_when_we_died_are_retried_one_at_a_time(
    runtime_factory: RuntimeFactory, receiver: CallbackReceiver, fake_llm: FakeLLM
) -> None:
    # Any of them may be what killed the process: run together, one crash would count against all of them,
    # and a crash loop would turn innocent messages into poison after max_attempts restarts.
    suspects = [(f"suspect-{n}", f"user-{n}", f"question {n}") for n in range(3)]
    await journal_as_if_interrupted(runtime_factory, suspects, attempts=1)
    fake_llm.latency = 0.3
    async with runtime_factory():
        await receiver.async_wait_visible(3, seconds=20)
    starts = sorted(r.received_at for r in fake_llm.chat_requests())
    assert len(starts) == 3
    assert all(b - a >= 0.25 for a, b in itertools.pairwise(starts)), starts  # never two at once


async def test_busy_port_is_a_clear_config_error(runtime_factory: RuntimeFactory) -> None:
    import pytest

    from gateway.errors import ConfigError

    async with runtime_factory() as first:
        with pytest.raises(ConfigError, match=r"server\.port.*cannot listen"):
            async with runtime_factory(server={"port": first.port}):
                pass
