"""The DingTalk Stream client against the protocol-exact fake (real sockets; nothing of ours is mocked)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import random
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from adapters.dingtalk.stream import AckResult, StreamConnection, StreamMessage
from tests.fakes.dingtalk_stream import OPEN_PATH, FakeDingTalkStream, bot_message

APP, SECRET = "dingabc123xyz", "app-secret-a"
APP2, SECRET2 = "dingdef456uvw", "app-secret-b"
BOT_TOPIC = "/v1.0/im/bot/messages/get"


class Journal:
    """An `on_message` that records what it got; can be held at a gate, fail, be slow, or answer LATER."""

    def __init__(self) -> None:
        self.messages: list[StreamMessage] = []
        self.gate: asyncio.Event | None = None
        self.failures = 0
        self.later = 0
        self.delay: Callable[[], float] = lambda: 0.0
        self.inflight = self.max_inflight = 0

    async def __call__(self, message: StreamMessage) -> AckResult | None:
        self.messages.append(message)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if delay := self.delay():
                await asyncio.sleep(delay)
            if self.failures > 0:
                self.failures -= 1
                raise RuntimeError("journal unavailable")
        finally:
            self.inflight -= 1
        if self.later > 0:
            self.later -= 1
            return AckResult(later=True)
        return None

    def ids(self) -> list[str]:
        return [m.message_id for m in self.messages]


async def eventually(predicate: Callable[[], object], within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def fake() -> Iterator[FakeDingTalkStream]:
    with FakeDingTalkStream(
        {APP: SECRET, APP2: SECRET2}, close_after_disconnect=0.5, event_repush_every=0.3, max_repushes=3
    ) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


Start = Callable[..., Awaitable[StreamConnection]]


@pytest.fixture
async def start(fake: FakeDingTalkStream, http: aiohttp.ClientSession) -> AsyncIterator[Start]:
    runs: list[tuple[StreamConnection, asyncio.Task[None]]] = []
    stop = asyncio.Event()

    async def go(
        on_message: Journal, *, app: str = APP, secret: str = SECRET, wait: bool = True, **kw: Any
    ) -> StreamConnection:
        options: dict[str, Any] = {"reconnect_min": 0.05, "reconnect_max": 0.2, "close_timeout": 0.2, **kw}
        conn = StreamConnection(http, fake.open_url, app, secret, on_message, **options)
        runs.append((conn, asyncio.create_task(conn.run(stop))))
        if wait:
            await eventually(lambda: conn.is_connected, what="connected")
        return conn

    yield go
    stop.set()
    done, _ = await asyncio.wait([t for _, t in runs], timeout=5) if runs else (set(), set())
    assert len(done) == len(runs) and all(t.exception() is None for t in done), "run() must return after stop"
    assert not any(conn.is_connected for conn, _ in runs)
    assert fake.violations == []


# ---------------------------------------------------------------- messages
async def test_bot_message_is_acked_only_after_on_message_returned(fake: FakeDingTalkStream, start: Start) -> None:
    journal = Journal()
    journal.gate = asyncio.Event()
    conn = await start(journal)
    opened = fake.opens(APP)[0]
    assert opened["clientSecret"] == SECRET and opened["localIp"] == "127.0.0.1"
    assert opened["ua"].startswith("switchboard/")
    assert {(s["type"], s["topic"]) for s in opened["subscriptions"]} == {
        ("CALLBACK", BOT_TOPIC),
        ("CALLBACK", "/v1.0/card/instances/callback"),
        ("EVENT", "*"),
    }

    message_id = fake.push_bot(APP, "你好", sender="staff42")
    await eventually(lambda: journal.messages, what="delivery")
    await asyncio.sleep(0.3)
    assert fake.acks(message_id) == [] and conn.acks == 0  # still being journaled: no ack yet
    journal.gate.set()
    await eventually(lambda: fake.acks(message_id), what="ack")

    (msg,) = journal.messages
    assert (msg.type, msg.topic, msg.message_id) == ("CALLBACK", BOT_TOPIC, message_id)
    assert msg.headers["appId"] == APP and msg.headers["contentType"] == "application/json"
    body = json.loads(msg.data)
    assert body["text"]["content"] == "你好" and body["senderStaffId"] == "staff42" and body["conversationType"] == "1"
    (ack,) = fake.acks(message_id)
    assert ack.kind == "CALLBACK" and json.loads(ack.data) == {"response": None}
    assert (conn.messages, conn.acks, conn.connects) == (1, 1, 1)


async def test_ack_result_data_replaces_the_default(fake: FakeDingTalkStream, start: Start) -> None:
    answer = json.dumps({"response": {"cardData": {"cardParamMap": {"x": "1"}}}})

    async def card_answer(message: StreamMessage) -> AckResult:
        return AckResult(data=answer)

    await start(card_answer)  # type: ignore[arg-type]
    message_id = fake.push_bot(APP, "button")
    await eventually(lambda: fake.acks(message_id), what="ack")
    assert fake.acks(message_id)[0].data == answer


async def test_ping_is_answered_with_its_data_echoed(fake: FakeDingTalkStream, start: Start) -> None:
    conn = await start(Journal())
    message_id = fake.ping(APP)
    await eventually(lambda: fake.acks(message_id), what="ping ack")
    (ack,) = fake.acks(message_id)
    assert ack.kind == "ping" and "opaque" in json.loads(ack.data)  # the fake also checks data == pushed data
    assert conn.pings == 1 and conn.acks == 0 and conn.messages == 0


async def test_garbage_frames_are_skipped_without_dropping_the_socket(fake: FakeDingTalkStream, start: Start) -> None:
    journal = Journal()
    conn = await start(journal)
    for raw in ("not json", "[1]", '{"type":"WHAT","headers":{"messageId":"m"}}', '{"type":"CALLBACK","headers":{}}'):
        fake.push_raw(APP, raw)
    fake.push_raw(APP, json.dumps({"type": "SYSTEM", "headers": {"topic": "KEEPALIVE", "messageId": "s1"}}))
    message_id = fake.push_bot(APP, "still here")
    await eventually(lambda: fake.acks(message_id), what="ack")
    assert journal.ids() == [message_id] and conn.connects == 1 and len(fake.tickets_used(APP)) == 1


# ---------------------------------------------------------------- events
async def test_event_not_acked_when_on_message_raises_is_pushed_again(fake: FakeDingTalkStream, start: Start) -> None:
    journal = Journal()
    journal.failures = 1
    await start(journal)
    event_id = fake.push_event(APP, "chat_update_title", {"chatId": "c1", "title": "t"})
    await eventually(lambda: fake.event_acks(event_id), what="event ack")
    assert fake.event_pushes(event_id) == 2 and len(journal.messages) == 2
    first, second = journal.messages
    assert first.type == second.type == "EVENT" and first.headers["eventId"] == second.headers["eventId"] == event_id
    assert fake.acks(first.message_id) == []  # the failed attempt was never acked
    (ack,) = fake.event_acks(event_id)
    assert ack.message_id == second.message_id and json.loads(ack.data) == {"status": "SUCCESS", "message": "success"}
    assert json.loads(second.data) == {"chatId": "c1", "title": "t"}


async def test_event_answered_later_is_pushed_again(fake: FakeDingTalkStream, start: Start) -> None:
    journal = Journal()
    journal.later = 1
    await start(journal)
    event_id = fake.push_event(APP)
    await eventually(lambda: len(fake.event_acks(event_id)) == 2, what="two event acks")
    statuses = [json.loads(a.data)["status"] for a in fake.event_acks(event_id)]
    assert statuses == ["LATER", "SUCCESS"]
    await asyncio.sleep(0.5)
    assert fake.event_pushes(event_id) == 2  # SUCCESS stopped the re-pushes


# ---------------------------------------------------------------- connection lifecycle
async def test_disconnect_switches_to_a_fresh_ticket_without_losing_messages(
    fake: FakeDingTalkStream, start: Start
) -> None:
    fake.close_after_disconnect = 5.0  # the client, not the server, must close the old socket
    journal = Journal()
    conn = await start(journal)
    before = fake.push_bot(APP, "before")
    fake.disconnect(APP)
    right_after = fake.push_bot(APP, "right after")
    await eventually(lambda: len(fake.tickets_used(APP)) == 2, what="second connection")
    after = fake.push_bot(APP, "after")
    await eventually(lambda: all(fake.acks(m) for m in (before, right_after, after)), what="acks")
    assert collections.Counter(journal.ids()) == collections.Counter([before, right_after, after])
    await eventually(lambda: fake.live(APP) == 1, within=2.0, what="old socket closed")
    first, second = fake.tickets_used(APP)
    assert first != second and fake.refusals == [] and len(fake.opens(APP)) == 2
    assert conn.connects == 2 and conn.is_connected
    await asyncio.sleep(0.3)
    assert fake.live(APP) == 1 and len(fake.tickets_used(APP)) == 2


async def test_abrupt_kill_reconnects_after_backoff(fake: FakeDingTalkStream, start: Start) -> None:
    journal = Journal()
    conn = await start(journal, reconnect_min=0.3, reconnect_max=0.6)
    killed = time.monotonic()
    fake.kill(APP)
    await eventually(lambda: len(fake.tickets_used(APP)) == 2 and conn.is_connected, what="reconnect")
    reopened = fake.requests_to(OPEN_PATH)[-1].at
    assert 0.3 <= reopened - killed < 2.0, reopened - killed
    message_id = fake.push_bot(APP, "after the kill")
    await eventually(lambda: fake.acks(message_id), what="ack")
    assert conn.reconnects == 1 and fake.live(APP) == 1 and fake.refusals == []


async def test_silent_socket_is_replaced_after_idle_timeout(fake: FakeDingTalkStream, start: Start) -> None:
    fake.ping_every = 0.1
    journal = Journal()
    conn = await start(journal, idle_timeout=0.5)
    await asyncio.sleep(1.2)
    assert len(fake.tickets_used(APP)) == 1 and conn.pings >= 5  # server pings keep a quiet socket alive
    silenced = time.monotonic()
    fake.silence(APP)
    await eventually(lambda: len(fake.tickets_used(APP)) == 2, within=3.0, what="replacement")
    assert time.monotonic() - silenced >= 0.4
    await eventually(lambda: fake.live(APP) == 1 and conn.is_connected, what="old socket closed")
    message_id = fake.push_bot(APP, "on the new socket")
    await eventually(lambda: fake.acks(message_id), what="ack")
    assert "no frame" in conn.last_error and conn.reconnects == 1


async def test_bad_credentials_retry_with_backoff_and_never_connect(fake: FakeDingTalkStream, start: Start) -> None:
    conn = await start(Journal(), secret="wrong", wait=False, reconnect_min=0.05, reconnect_max=0.2)
    await eventually(lambda: len(fake.opens(APP)) >= 5, what="retries")
    times = [r.at for r in fake.requests_to(OPEN_PATH)]
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(times)), times
    assert not conn.is_connected and conn.connects == 0 and conn.failures >= 4
    assert "InvalidAuthentication" in conn.last_error and fake.live(APP) == 0 and fake.tickets_used(APP) == []


async def test_open_server_errors_are_retried(fake: FakeDingTalkStream, start: Start) -> None:
    fake.fail_next(OPEN_PATH + "$", http_status=503, times=2)
    conn = await start(Journal())
    assert conn.failures == 2 and conn.connects == 1 and len(fake.opens(APP)) == 3 and "503" in conn.last_error


async def test_two_apps_share_one_fake(fake: FakeDingTalkStream, start: Start) -> None:
    one, two = Journal(), Journal()
    conn1, conn2 = await start(one), await start(two, app=APP2, secret=SECRET2)
    m1, m2 = fake.push_bot(APP, "to one"), fake.push_bot(APP2, "to two")
    await eventually(lambda: fake.acks(m1) and fake.acks(m2), what="acks")
    assert one.ids() == [m1] and two.ids() == [m2]
    assert fake.acks(m1)[0].client_id == APP and fake.acks(m2)[0].client_id == APP2
    assert fake.live(APP) == fake.live(APP2) == 1 and conn1.connects == conn2.connects == 1


async def test_stop_lets_in_flight_messages_ack(fake: FakeDingTalkStream, http: aiohttp.ClientSession) -> None:
    journal = Journal()
    journal.delay = lambda: 0.3
    stop = asyncio.Event()
    conn = StreamConnection(http, fake.open_url, APP, SECRET, journal, close_timeout=0.2)
    task = asyncio.create_task(conn.run(stop))
    await eventually(lambda: conn.is_connected, what="connected")
    message_id = fake.push_bot(APP, "slow")
    await eventually(lambda: journal.messages, what="delivery")
    stop.set()
    await asyncio.wait_for(task, 3)
    assert len(fake.acks(message_id)) == 1 and not conn.is_connected
    await eventually(lambda: fake.live(APP) == 0, what="socket closed")
    assert fake.violations == []


async def test_stop_with_a_stuck_journal_reports_the_message_it_could_not_take(
    fake: FakeDingTalkStream, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal()
    journal.gate = asyncio.Event()  # the journal never finishes
    stop = asyncio.Event()
    conn = StreamConnection(
        http, fake.open_url, APP, SECRET, journal, close_timeout=0.2, max_inflight=2, drain_timeout=0.3
    )
    task = asyncio.create_task(conn.run(stop))
    await eventually(lambda: conn.is_connected, what="connected")
    for i in range(3):
        fake.push_bot(APP, f"m{i}")
    await eventually(lambda: len(journal.messages) == 2, what="two in flight, the third held by the reader")
    stop.set()
    await asyncio.wait_for(task, 5)
    [error] = [r for r in caplog.records if "not yet journaled" in r.getMessage()]
    assert error.levelname == "ERROR" and "does not redeliver" in error.getMessage()


async def test_burst_of_100_messages_from_20_users(fake: FakeDingTalkStream, start: Start) -> None:
    journal = Journal()
    rng = random.Random(7)
    journal.delay = lambda: rng.uniform(0.0, 0.02)  # a journal write
    conn = await start(journal)
    messages = [bot_message(f"message {i}", robot_code=APP, sender=f"user{i % 20}") for i in range(100)]
    ids = fake.push_bots(APP, messages)
    await eventually(lambda: len(fake.acks(kind="CALLBACK")) == 100, within=10, what="100 acks")
    assert collections.Counter(journal.ids()) == collections.Counter(ids) and len(set(ids)) == 100
    senders = collections.Counter(json.loads(m.data)["senderStaffId"] for m in journal.messages)
    assert len(senders) == 20 and set(senders.values()) == {5}
    assert journal.max_inflight > 1  # handled concurrently, not one after another
    latencies = sorted(a.latency * 1000 for a in fake.acks(kind="CALLBACK"))
    p50, p99 = statistics.median(latencies), latencies[98]
    print(f"\nburst of 100: ack latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max in flight {journal.max_inflight}")
    assert conn.messages == conn.acks == 100 and fake.live(APP) == 1


async def test_fake_refuses_unknown_reused_and_expired_tickets(
    fake: FakeDingTalkStream, http: aiohttp.ClientSession
) -> None:
    async def ticket(secret: str = SECRET) -> tuple[int, dict[str, Any]]:
        body = {"clientId": APP, "clientSecret": secret, "subscriptions": [{"type": "EVENT", "topic": "*"}]}
        async with http.post(fake.open_url, json={**body, "ua": "test", "localIp": "127.0.0.1"}) as resp:
            return resp.status, await resp.json()

    async def upgrade(endpoint: str, value: str) -> int:
        try:
            async with http.ws_connect(endpoint, params={"ticket": value}):
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status

    status, answer = await ticket("wrong")
    assert status == 401 and answer["code"] == "InvalidAuthentication"
    status, answer = await ticket()
    endpoint, value = answer["endpoint"], answer["ticket"]
    assert status == 200 and await upgrade(endpoint, "nope") == 401
    assert await upgrade(endpoint, value) == 101 and await upgrade(endpoint, value) == 403
    fake.ticket_ttl = 0.0
    _, answer = await ticket()
    await asyncio.sleep(0.05)
    assert await upgrade(endpoint, answer["ticket"]) == 403
    assert fake.refusals == [(401, "unknown ticket"), (403, "ticket already used"), (403, "ticket expired")]
