"""The Feishu long-connection client against the protocol-exact fake (real sockets, SDK protobuf on the fake side)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from adapters.feishu import ws_frames as wf
from adapters.feishu.ws import FeishuWsConnection, FeishuWsSettings, load_frame_class
from tests.fakes.feishu_ws import CONN_LIMIT_HEADERS, FakeFeishuWs, eventually, message_event

APP, SECRET = "cli_a1b2c3d4e5f6a7b8", "app-secret-a"
APP2, SECRET2 = "cli_f9e8d7c6b5a4f3e2", "app-secret-b"
FAST = FeishuWsSettings(
    connect_timeout=2.0,
    close_timeout=0.5,
    reconnect_interval=0.1,
    reconnect_nonce=0.0,
    backoff_max=0.4,
    slow_retry=0.6,
    drain_timeout=1.0,
)


class Journal:
    """An `on_event` that records payloads; can fail, be slow, or note what the fake had acked at call time."""

    def __init__(self, fake: FakeFeishuWs) -> None:
        self.fake = fake
        self.payloads: list[bytes] = []
        self.acks_seen: list[int] = []
        self.failures = 0
        self.delays: list[float] = []

    async def __call__(self, payload: bytes) -> None:
        self.payloads.append(payload)
        self.acks_seen.append(len(self.fake.acks(json.loads(payload)["header"]["event_id"])))
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("journal unavailable")

    def event_ids(self) -> list[str]:
        return [json.loads(p)["header"]["event_id"] for p in self.payloads]


@pytest.fixture
def fake() -> Iterator[FakeFeishuWs]:
    with FakeFeishuWs({APP: SECRET, APP2: SECRET2}) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


Start = Callable[..., Awaitable[FeishuWsConnection]]


@pytest.fixture
async def start(fake: FakeFeishuWs, http: aiohttp.ClientSession) -> AsyncIterator[Start]:
    runs: list[tuple[FeishuWsConnection, asyncio.Task[None]]] = []

    async def go(
        on_event: Callable[[bytes], Awaitable[None]],
        *,
        app: str = APP,
        secret: str = SECRET,
        wait: bool = True,
        **overrides: Any,
    ) -> FeishuWsConnection:
        conn = FeishuWsConnection(app, secret, on_event, domain=fake.domain, settings=replace(FAST, **overrides))
        runs.append((conn, asyncio.create_task(conn.run(http))))
        if wait:
            await eventually(lambda: conn.connected, within=10, what="connected")
        return conn

    yield go
    for conn, _ in runs:
        await conn.close()
    assert all(task.done() and task.exception() is None for _, task in runs), "run() must return after close()"
    assert fake.errors == []


# ---------------------------------------------------------------- connecting
async def test_bootstrap_connect_and_first_frame_is_a_ping(fake: FakeFeishuWs, start: Start) -> None:
    conn = await start(Journal(fake))
    boot = fake.bootstraps[0]
    assert boot["body"] == {"AppID": APP, "AppSecret": SECRET} and boot["headers"]["locale"] == "zh"
    await eventually(lambda: fake.frames(APP), what="first frame")
    first = fake.frames(APP)[0]
    assert first.method == wf.METHOD_CONTROL and first.headers == {"type": "ping"}
    assert first.service == fake.service_ids[APP]
    assert conn.config.ping_interval == 1 and conn.config.reconnect_interval == 0.2  # the server's ClientConfig
    assert conn.stats.connects == 1 and conn.stats.reconnects == 0 and conn.last_error == ""


async def test_event_is_stored_once_then_acked_200(fake: FakeFeishuWs, start: Start) -> None:
    journal = Journal(fake)
    await start(journal)
    payload = json.dumps(message_event("你好", app_id=APP), ensure_ascii=False).encode()
    event_id = fake.push(APP, payload)
    await eventually(lambda: fake.acks(event_id), what="ack")
    (ack,) = fake.acks(event_id)
    assert journal.payloads == [payload] and journal.acks_seen == [0]  # stored before any ack went out
    assert ack.code == 200 and ack.headers["biz_rt"].isdigit() and ack.headers["type"] == "event"
    print(f"single event ack latency: {ack.latency * 1000:.2f} ms")
    assert ack.latency < 1.0
    await asyncio.sleep(0.3)
    assert len(journal.payloads) == 1 and fake.deliveries(event_id) == 1


@pytest.mark.parametrize("reverse", [False, True])
async def test_fragmented_event_is_reassembled(fake: FakeFeishuWs, start: Start, reverse: bool) -> None:
    journal = Journal(fake)
    await start(journal)
    payload = json.dumps(message_event("x" * 5000, app_id=APP)).encode()
    event_id = fake.push(APP, payload, fragments=4, reverse=reverse)
    await eventually(lambda: fake.acks(event_id), what="ack")
    assert journal.payloads == [payload]
    assert [a.code for a in fake.acks(event_id)] == [200]


async def test_failed_store_acks_500_and_the_redelivery_succeeds(fake: FakeFeishuWs, start: Start) -> None:
    fake.knobs.redeliver_after = 0.4
    journal = Journal(fake)
    journal.failures = 1
    conn = await start(journal)
    event_id = fake.push(APP, message_event("retry me", app_id=APP))
    await eventually(lambda: len(fake.acks(event_id)) == 2, what="second ack")
    assert [a.code for a in fake.acks(event_id)] == [500, 200]
    assert journal.event_ids() == [event_id, event_id] and fake.deliveries(event_id) == 2
    assert conn.stats.event_errors == 1 and conn.stats.events == 1


async def test_slow_store_is_redelivered_and_does_not_block_others(fake: FakeFeishuWs, start: Start) -> None:
    journal = Journal(fake)
    journal.delays = [3.3]  # longer than Feishu's 3 s budget
    conn = await start(journal)
    slow_id = fake.push(APP, message_event("slow", app_id=APP))
    await eventually(lambda: journal.payloads, what="slow call")
    quick_id = fake.push(APP, message_event("quick", app_id=APP))
    await eventually(lambda: fake.acks(quick_id), what="quick ack")
    assert fake.acks(quick_id)[0].latency < 0.5 and not fake.acks(slow_id)
    await eventually(lambda: len(fake.acks(slow_id)) == 2, within=6, what="both acks of the slow event")
    assert journal.event_ids().count(slow_id) == 2  # dedupe by event_id is the journal's job
    assert fake.deliveries(slow_id) == 2 and conn.stats.late_acks == 1
    assert {a.code for a in fake.acks(slow_id)} == {200}


async def test_card_frames_are_acked_and_ignored(fake: FakeFeishuWs, start: Start) -> None:
    journal = Journal(fake)
    conn = await start(journal)
    card_id = fake.push(APP, {"header": {"event_id": "card-1"}, "action": {}}, kind="card")
    await eventually(lambda: fake.acks(card_id), what="card ack")
    assert fake.acks(card_id)[0].code == 200 and journal.payloads == [] and conn.stats.cards == 1


# ---------------------------------------------------------------- liveness and reconnects
async def test_pong_client_config_changes_the_ping_interval(fake: FakeFeishuWs, start: Start) -> None:
    fake.knobs.client_config = {**fake.knobs.client_config, "PingInterval": 30}
    fake.knobs.pong_config = {"PingInterval": 0.1, "ReconnectInterval": 0.3}
    conn = await start(Journal(fake))
    await eventually(lambda: len(fake.pings(APP)) >= 5, what="pings at the new interval")
    assert conn.config.ping_interval == 0.1 and conn.config.reconnect_interval == 0.3
    times = [p.at for p in fake.pings(APP)]
    assert all(0.05 < b - a < 0.5 for a, b in itertools.pairwise(times[1:]))


async def test_half_open_socket_is_replaced(fake: FakeFeishuWs, start: Start) -> None:
    fake.knobs.client_config = {**fake.knobs.client_config, "PingInterval": 0.2}
    fake.knobs.answer_pings = False
    conn = await start(Journal(fake))
    await eventually(lambda: fake.connections(APP) >= 2, what="reconnect after missed pongs")
    assert "half-open" in conn.last_error
    fake.knobs.answer_pings = True
    await eventually(lambda: conn.connected, what="connected again")
    opened = fake.connections(APP)
    await asyncio.sleep(0.7)
    assert fake.connections(APP) == opened and conn.connected


@pytest.mark.parametrize(
    ("how", "healthy_after", "interval", "nonce", "low", "high"),
    [
        ("drop", 30.0, 0.6, 0.0, 0.55, 1.5),  # short-lived connection: wait ReconnectInterval
        ("kill", 30.0, 0.6, 0.0, 0.55, 1.5),
        ("drop", 0.0, 5.0, 0.3, 0.0, 0.8),  # healthy connection: only the ReconnectNonce jitter
    ],
)
async def test_server_drop_reconnects_per_client_config(
    fake: FakeFeishuWs,
    start: Start,
    how: str,
    healthy_after: float,
    interval: float,
    nonce: float,
    low: float,
    high: float,
) -> None:
    fake.knobs.client_config = {**fake.knobs.client_config, "ReconnectInterval": interval, "ReconnectNonce": nonce}
    journal = Journal(fake)
    conn = await start(journal, healthy_after=healthy_after)
    dropped_at = time.monotonic()
    fake.drop(APP) if how == "drop" else fake.kill(APP)
    await eventually(lambda: fake.open_connections(APP) == 1 and fake.connections(APP) == 2, what="reconnect")
    gap = time.monotonic() - dropped_at
    assert low <= gap <= high, gap
    await eventually(lambda: conn.stats.reconnects == 1 and conn.connected, what="client side of the reconnect")
    assert "closed by the server" in conn.last_error
    event_id = fake.push(APP, message_event("after reconnect", app_id=APP))
    await eventually(lambda: fake.acks(event_id), what="ack on the new socket")


@pytest.mark.parametrize(
    ("knob", "value", "needle"),
    [
        ("bootstrap_code", 1, "bootstrap code 1"),
        ("bootstrap_code", 1000040343, "bootstrap code 1000040343"),
        ("bootstrap_status", 503, "bootstrap HTTP 503"),
    ],
)
async def test_bootstrap_errors_back_off_and_recover(
    fake: FakeFeishuWs, start: Start, knob: str, value: int, needle: str
) -> None:
    setattr(fake.knobs, knob, value)
    conn = await start(Journal(fake), wait=False)
    await eventually(lambda: len(fake.bootstraps) >= 4, what="retries")
    assert needle in conn.last_error and not conn.connected
    setattr(fake.knobs, knob, 0 if knob == "bootstrap_code" else 200)
    await eventually(lambda: conn.connected, what="recovered")
    times = [b["at"] for b in fake.bootstraps[:4]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.09 and gaps[2] > gaps[0] * 1.5, gaps  # 0.1, 0.2, 0.4 (capped)


async def test_wrong_secret_retries_slowly_with_a_clear_error(fake: FakeFeishuWs, start: Start) -> None:
    conn = await start(Journal(fake), secret="wrong", wait=False, slow_retry=1.5)
    await eventually(lambda: conn.last_error, what="refusal")
    assert conn.last_error.startswith("bootstrap refused: code 403") and "app_secret" in conn.last_error
    await asyncio.sleep(0.5)
    assert len(fake.bootstraps) == 1 and not conn.connected  # slow_retry, not reconnect_interval (0.2 s)


async def test_connection_limit_refusal_is_reported(fake: FakeFeishuWs, start: Start) -> None:
    fake.knobs.max_conns_per_app = 1
    await start(Journal(fake))
    second = await start(Journal(fake), wait=False)
    await eventually(lambda: second.last_error, what="limit refusal")
    assert "connection limit reached" in second.last_error and "1000040350" in second.last_error
    fake.knobs.handshake_refusal = {"handshake-status": "403", "handshake-msg": "forbidden"}
    third = await start(Journal(fake), app=APP2, secret=SECRET2, wait=False)
    await eventually(lambda: third.last_error, what="forbidden")
    assert third.last_error.startswith("handshake forbidden: 403")
    assert CONN_LIMIT_HEADERS["handshake-autherrcode"] == str(wf.CODE_EXCEED_CONN_LIMIT)


async def test_two_apps_in_one_process_are_independent(fake: FakeFeishuWs, start: Start) -> None:
    one, two = Journal(fake), Journal(fake)
    conn_one = await start(one)
    conn_two = await start(two, app=APP2, secret=SECRET2)
    id_one = fake.push(APP, message_event("for one", app_id=APP))
    id_two = fake.push(APP2, message_event("for two", app_id=APP2))
    await eventually(lambda: fake.acks(id_one) and fake.acks(id_two), what="both acks")
    assert one.event_ids() == [id_one] and two.event_ids() == [id_two]
    fake.drop(APP)
    await eventually(lambda: fake.connections(APP) == 2 and conn_one.connected, what="app one reconnects")
    assert fake.connections(APP2) == 1 and conn_two.connected and conn_two.stats.reconnects == 0
    assert {p.service for p in fake.pings(APP2)} == {fake.service_ids[APP2]}


async def test_close_mid_stream_drains_acks_and_leaves_no_tasks(
    fake: FakeFeishuWs, http: aiohttp.ClientSession
) -> None:
    journal = Journal(fake)
    journal.delays = [0.3] * 5
    before = asyncio.all_tasks()
    conn = FeishuWsConnection(APP, SECRET, journal, domain=fake.domain, settings=FAST)
    runner = asyncio.create_task(conn.run(http))
    await eventually(lambda: conn.connected, within=10, what="connected")
    ids = [fake.push(APP, message_event(f"m{i}", app_id=APP)) for i in range(5)]
    await eventually(lambda: len(journal.payloads) == 5, what="all in flight")
    await conn.close()
    assert runner.done() and not conn.connected and conn.stats.events == 5
    assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
    await eventually(lambda: fake.open_connections(APP) == 0, what="socket closed")
    assert [a.code for i in ids for a in fake.acks(i)] == [200] * 5  # stored during the drain, acked before close


# ---------------------------------------------------------------- pure pieces
async def test_codec_round_trips_an_ack_like_the_sdk() -> None:
    codec = wf.FrameCodec(await load_frame_class())
    frame = wf.WsFrame(method=1, service=7, headers=(("type", "event"), ("sum", "1")), payload=b"{}", seq_id=9)
    ack = codec.decode(codec.encode(wf.ack_frame(frame, 200, 12)))
    assert ack.headers[-1] == ("biz_rt", "12") and ack.payload == b'{"code": 200}' and ack.seq_id == 9
    with pytest.raises(Exception):  # noqa: B017,PT011 - the vendored protobuf's DecodeError
        codec.decode(b"\xff\xff\xff")


def test_reassembler_bounds_and_ttl() -> None:
    now = [0.0]
    r = wf.Reassembler(ttl=5.0, max_parts=4, max_bytes=10, clock=lambda: now[0])
    assert r.add("m1", 2, 1, b"world") is None and r.add("m1", 2, 0, b"hello") == b"helloworld"
    assert r.add("m2", 2, 0, b"ab") is None
    now[0] = 5.1
    assert r.add("m2", 2, 1, b"cd") is None and r.dropped == 1  # the first half expired
    assert r.add("m3", 5, 0, b"x") is None and r.add("m4", 2, 2, b"x") is None and r.dropped == 3
    assert r.add("m5", 2, 0, b"0123456789A") is None and r.add("m6", 2, 0, b"z") is None  # m2, m5 evicted: > 10 B
    assert r.dropped == 5 and r.add("m6", 2, 1, b"y") == b"zy"


def test_bootstrap_and_handshake_classification() -> None:
    url = "wss://msg-frontier.feishu.cn/ws/v2?fpid=493&device_id=7&access_key=k&service_id=33554678&ticket=t"
    body = {"code": 0, "data": {"URL": url, "ClientConfig": {"PingInterval": 90, "ReconnectNonce": "x"}}}
    endpoint = wf.parse_endpoint(200, json.dumps(body).encode())
    assert (endpoint.device_id, endpoint.service_id) == ("7", 33554678)
    config = wf.ClientConfig().merged(endpoint.client_config)
    assert config.ping_interval == 90 and config.reconnect_nonce == 30  # bad values keep the default
    no_service = {"code": 0, "data": {"URL": "wss://x/ws?device_id=1"}}
    with pytest.raises(wf.LinkError, match="service_id"):
        wf.parse_endpoint(200, json.dumps(no_service).encode())
    with pytest.raises(wf.LinkError) as refused:
        wf.parse_endpoint(200, b'{"code": 10003, "msg": "invalid param"}')
    assert refused.value.slow
    assert not wf.handshake_error(
        514, {"handshake-status": "514", "handshake-msg": "auth", "handshake-autherrcode": "1"}
    ).slow
    assert wf.handshake_error(514, CONN_LIMIT_HEADERS).slow and not wf.handshake_error(502, {}).slow


# ---------------------------------------------------------------- measurement
def pct(values: list[float] | list[int], p: int) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return float(values[max(0, -(-len(values) * p // 100) - 1)])


async def test_ack_latency_for_1000_events(fake: FakeFeishuWs, start: Start) -> None:
    """Not a timed assertion: prints p50/p99 of push-to-ack latency as the fake server sees it."""
    stored: list[bytes] = []

    async def on_event(payload: bytes) -> None:
        stored.append(payload)
        await asyncio.sleep(0)

    conn = await start(on_event)
    events = [message_event(f"load {i}", app_id=APP) for i in range(1000)]
    began = time.monotonic()
    ids = fake.push_many(APP, events)
    await eventually(lambda: len(fake.acks(app_id=APP)) >= 1000, within=20, what="1000 acks")
    wall = time.monotonic() - began
    acks = fake.acks(app_id=APP)
    assert len(stored) == 1000 and {a.code for a in acks} == {200} and {a.event_id for a in acks} == set(ids)
    latencies = sorted(a.latency * 1000 for a in acks)
    biz_rt = sorted(int(a.headers["biz_rt"]) for a in acks)
    print(
        f"\n1000 events pushed back to back: server-seen push->ack p50 {pct(latencies, 50):.1f} ms, "
        f"p99 {pct(latencies, 99):.1f} ms, max {latencies[-1]:.1f} ms; client arrival->ack (biz_rt) "
        f"p50 {pct(biz_rt, 50):.0f} ms, p99 {pct(biz_rt, 99):.0f} ms; wall {wall:.2f} s"
    )
    assert conn.stats.events == 1000 and conn.stats.refused == 0
