"""A protocol-exact fake of Feishu's event long connection: the bootstrap endpoint plus the protobuf WebSocket.

Runs on 127.0.0.1 (port 0) in its own thread with its own event loop (`ThreadedServer`), so it keeps answering
(and keeps its redelivery clock) while the test's loop is busy. Frames are built and parsed with the SDK's
own `lark_oapi.ws.pb.pbbp2_pb2.Frame`, imported in the fake's thread after its loop is set (lark's
`ws/client.py` calls `asyncio.get_event_loop()` at import), independently of the adapter's typed codec.

    with FakeFeishuWs({"cli_a": "secret-a"}) as fake:
        conn = FeishuWsConnection("cli_a", "secret-a", on_event, domain=fake.domain)
        event_id = fake.push("cli_a", message_event("hi", app_id="cli_a"), fragments=3)
        await eventually(lambda: fake.acks(event_id))
        assert fake.errors == []

Behaviour (lark-oapi 1.7.5 `ws/client.py`, protocols.md A1 and G):
* `POST /callback/ws/endpoint` checks AppID/AppSecret and answers `{code, msg, data: {URL, ClientConfig}}`;
  the URL carries `device_id`, `service_id` and a single-use ticket naming the app.
* Pings (CONTROL, `type=ping`, `service` = the URL's service_id) are answered with a pong, optionally
  carrying a ClientConfig JSON payload; `knobs.answer_pings = False` simulates a half-open socket.
* Events (DATA, headers `type, message_id, trace_id, sum, seq`) go to the app's newest connection. An ack
  must echo the frame's headers plus `biz_rt` with payload `{"code": ...}`; anything else lands in `errors`.
* An event not acked 200 within `knobs.redeliver_after` (Feishu: 3 s) is delivered again with the same
  payload (same event_id) under a new message_id, at most `knobs.max_redeliveries` times.
* A refused handshake answers non-101 with `handshake-status`, `handshake-msg`, `handshake-autherrcode`;
  more than `knobs.max_conns_per_app` (Feishu: 50) sockets per app get 514 / 1000040350.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.threaded import ThreadedServer

__all__ = ["Ack", "ClientFrame", "FakeFeishuWs", "Knobs", "eventually", "message_event"]

CONTROL, DATA = 0, 1
Event = dict[str, Any] | bytes  # an envelope, or the exact payload bytes
CONN_LIMIT_HEADERS = {
    "handshake-status": "514",
    "handshake-msg": "exceed conn limit",
    "handshake-autherrcode": "1000040350",
}


@dataclass(frozen=True)
class Ack:
    """One DATA frame the client sent back."""

    app_id: str
    conn: int
    message_id: str
    event_id: str
    code: int
    headers: dict[str, str]
    latency: float  # seconds from this delivery being sent to its ack arriving


@dataclass(frozen=True)
class ClientFrame:
    app_id: str
    conn: int
    method: int
    service: int
    headers: dict[str, str]
    payload: bytes
    at: float


@dataclass
class Knobs:
    """What the fake does; safe to change from the test at any time."""

    client_config: dict[str, Any] = field(
        default_factory=lambda: {"ReconnectCount": -1, "ReconnectInterval": 0.2, "ReconnectNonce": 0, "PingInterval": 1}
    )
    bootstrap_status: int = 200
    bootstrap_code: int = 0  # non-zero: every bootstrap answers this code
    bootstrap_msg: str = "fake error"
    handshake_refusal: dict[str, str] | None = None  # handshake-* headers of a refused upgrade
    answer_pings: bool = True
    pong_config: dict[str, Any] | None = None  # payload of every pong
    redeliver_after: float | None = 3.0
    max_redeliveries: int = 4
    max_conns_per_app: int = 50


@dataclass
class _Conn:
    number: int
    app_id: str
    ws: web.WebSocketResponse
    request: web.Request


@dataclass
class _Delivery:
    app_id: str
    event_id: str
    payload: bytes
    fragments: int
    kind: str
    sent: dict[str, tuple[float, list[dict[str, str]]]] = field(default_factory=dict)  # message_id -> time, headers
    acked: bool = False


def message_event(
    text: str,
    *,
    app_id: str = "cli_test",
    event_id: str | None = None,
    chat_type: str = "p2p",
    open_id: str = "ou_user1",
    chat_id: str = "oc_chat1",
) -> dict[str, Any]:
    """A schema-2.0 `im.message.receive_v1` envelope as Feishu pushes it (protocols.md A2)."""
    now = str(int(time.time() * 1000))
    mentions = []
    content = text
    if chat_type == "group":
        content = "@_user_1 " + text
        mentions = [
            {"key": "@_user_1", "id": {"union_id": "on_bot", "user_id": "", "open_id": "ou_bot"}, "name": "Bot"}
        ]
    header = {"event_id": event_id or uuid.uuid4().hex, "token": "", "create_time": now}
    header.update(event_type="im.message.receive_v1", tenant_key="tk_fake", app_id=app_id)
    message = {
        "message_id": "om_" + uuid.uuid4().hex,
        "root_id": "",
        "parent_id": "",
        "create_time": now,
        "update_time": now,
        "chat_id": chat_id,
        "thread_id": "",
        "chat_type": chat_type,
        "message_type": "text",
        "content": json.dumps({"text": content}, ensure_ascii=False),
        "mentions": mentions,
        "user_agent": "Mozilla/5.0 Lark/7.30",
    }
    sender_id = {"union_id": "on_" + open_id, "user_id": "u_" + open_id, "open_id": open_id}
    sender = {"sender_id": sender_id, "sender_type": "user", "tenant_key": "tk_fake"}
    return {"schema": "2.0", "header": header, "event": {"sender": sender, "message": message}}


async def eventually(predicate: Callable[[], object], within: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` from the test's loop (the fake runs elsewhere, so polling never blocks it)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class FakeFeishuWs(ThreadedServer):
    """The fake platform for one or more apps; every public method is safe to call from the test's thread."""

    thread_name = "fake-feishu-ws"
    ready_timeout = 60.0
    not_ready_message = "fake Feishu long-connection server did not start"

    def __init__(self, apps: dict[str, str] | None = None) -> None:
        super().__init__()
        self.apps = dict(apps or {"cli_test": "test-secret"})
        self.service_ids = {app: 33554000 + i for i, app in enumerate(self.apps)}
        self.knobs = Knobs()
        self._lock = threading.Lock()
        self._frames: list[ClientFrame] = []
        self._acks: list[Ack] = []
        self._errors: list[str] = []
        self._bootstraps: list[dict[str, Any]] = []
        self._tickets: dict[str, str] = {}
        self._deliveries: dict[str, _Delivery] = {}  # event_id ->
        self._by_message: dict[str, _Delivery] = {}
        self._conns: dict[str, list[_Conn]] = {app: [] for app in self.apps}
        self._opened: dict[str, int] = dict.fromkeys(self.apps, 0)
        self._app_up: dict[str, asyncio.Event] = {}  # set while the app has a socket (fake's loop only)
        self._count = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._frame_cls: Any = None

    # ---------------------------------------------------------------- lifecycle
    def _make_app(self) -> web.Application:
        # Imported in the fake's thread, with its loop running (lark's ws/client.py calls get_event_loop()).
        self._frame_cls = importlib.import_module("lark_oapi.ws.pb.pbbp2_pb2").Frame
        self._app_up = {app: asyncio.Event() for app in self.apps}
        app = web.Application()
        app.router.add_post("/callback/ws/endpoint", self._bootstrap)
        app.router.add_get("/ws/v2", self._socket)
        return app

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super()._shutdown()

    @property
    def domain(self) -> str:
        return self.base_url

    # ---------------------------------------------------------------- inspection
    def frames(self, app_id: str | None = None, method: int | None = None) -> list[ClientFrame]:
        """Frames the clients sent, oldest first."""
        with self._lock:
            return [f for f in self._frames if app_id in (None, f.app_id) and method in (None, f.method)]

    def pings(self, app_id: str | None = None) -> list[ClientFrame]:
        return [f for f in self.frames(app_id, CONTROL) if f.headers.get("type") == "ping"]

    def acks(self, event_id: str | None = None, app_id: str | None = None) -> list[Ack]:
        with self._lock:
            return [a for a in self._acks if event_id in (None, a.event_id) and app_id in (None, a.app_id)]

    def deliveries(self, event_id: str) -> int:
        """How often the event was sent (first delivery plus redeliveries)."""
        with self._lock:
            return len(self._deliveries[event_id].sent)

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    @property
    def bootstraps(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._bootstraps)

    def connections(self, app_id: str) -> int:
        """Sockets opened for the app so far."""
        with self._lock:
            return self._opened[app_id]

    def open_connections(self, app_id: str) -> int:
        with self._lock:
            return len(self._conns[app_id])

    # ---------------------------------------------------------------- actions
    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        assert self._loop is not None, "server not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def push(self, app_id: str, event: Event, *, fragments: int = 1, reverse: bool = False, kind: str = "event") -> str:
        """Send one event (`kind="card"`: a card callback) to the app's newest connection, split into
        `fragments` frames (sent last-first with `reverse`); returns its event_id."""
        return str(self._call(self._push_many(app_id, [event], fragments, reverse, kind))[0])

    def push_many(self, app_id: str, events: Sequence[Event], *, gap: float = 0.0) -> list[str]:
        """Send events back to back, as fast as the fake's loop can write them (or `gap` seconds apart)."""
        return list(self._call(self._push_many(app_id, events, 1, False, "event", gap), timeout=60))

    def drop(self, app_id: str) -> None:
        """Close every socket of the app with a close frame (server-side restart)."""
        self._call(self._close_app(app_id, abort=False))

    def kill(self, app_id: str) -> None:
        """Drop the app's TCP connections without a close handshake."""
        self._call(self._close_app(app_id, abort=True))

    # ---------------------------------------------------------------- bootstrap + handshake
    async def _bootstrap(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self._bootstraps.append({"body": body, "headers": dict(request.headers), "at": time.monotonic()})
        knobs = self.knobs
        if knobs.bootstrap_status != 200:
            return web.json_response({"code": knobs.bootstrap_status, "msg": "busy"}, status=knobs.bootstrap_status)
        if knobs.bootstrap_code:
            return web.json_response({"code": knobs.bootstrap_code, "msg": knobs.bootstrap_msg, "data": None})
        app_id = body.get("AppID")
        if app_id not in self.apps or body.get("AppSecret") != self.apps[app_id]:
            return web.json_response({"code": 403, "msg": "invalid app_id or app_secret", "data": None})
        ticket = secrets.token_hex(8)
        with self._lock:
            self._tickets[ticket] = app_id
        query = f"fpid=493&aid=552564&device_id={secrets.randbelow(10**18)}&access_key={secrets.token_hex(16)}"
        url = f"ws://127.0.0.1:{self.port}/ws/v2?{query}&service_id={self.service_ids[app_id]}&ticket={ticket}"
        return web.json_response({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": knobs.client_config}})

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            app_id = self._tickets.pop(request.query.get("ticket", ""), None)
            full = app_id is not None and len(self._conns[app_id]) >= self.knobs.max_conns_per_app
        refusal = self.knobs.handshake_refusal or (CONN_LIMIT_HEADERS if full else None)
        if app_id is None:
            refusal = {"handshake-status": "403", "handshake-msg": "invalid ticket"}
        if refusal is not None:
            return web.Response(status=int(refusal.get("handshake-status", "400")), headers=refusal)
        assert app_id is not None
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._lock:
            self._count += 1
            conn = _Conn(self._count, app_id, ws, request)
            self._conns[app_id].append(conn)
            self._opened[app_id] += 1
        self._app_up[app_id].set()
        try:
            async for msg in ws:
                if msg.type is WSMsgType.BINARY:
                    await self._on_frame(conn, msg.data)
                else:
                    self._error(f"conn {conn.number}: non-binary message {msg.type}")
        finally:
            with self._lock:
                self._conns[app_id].remove(conn)
                if not self._conns[app_id]:
                    self._app_up[app_id].clear()
        return ws

    # ---------------------------------------------------------------- frames
    def _error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _frame(self, method: int, service: int, headers: list[tuple[str, str]], payload: bytes = b"") -> bytes:
        frame = self._frame_cls()
        frame.SeqID, frame.LogID, frame.service, frame.method = secrets.randbelow(2**40), 0, service, method
        for key, value in headers:
            h = frame.headers.add()
            h.key, h.value = key, value
        if payload:
            frame.payload = payload
        return bytes(frame.SerializeToString())

    async def _on_frame(self, conn: _Conn, data: bytes) -> None:
        now = time.monotonic()
        frame = self._frame_cls()
        try:
            frame.ParseFromString(data)
            headers = {h.key: h.value for h in frame.headers}
            record = ClientFrame(conn.app_id, conn.number, frame.method, frame.service, headers, frame.payload, now)
        except Exception as exc:
            self._error(f"conn {conn.number}: undecodable frame {exc!r}")
            return
        with self._lock:
            self._frames.append(record)
        service = self.service_ids[conn.app_id]
        if record.method == CONTROL and headers.get("type") == "ping":
            if record.service != service:
                self._error(f"conn {conn.number}: ping with service {record.service}, expected {service}")
            if self.knobs.answer_pings:
                pong = json.dumps(self.knobs.pong_config).encode() if self.knobs.pong_config else b""
                with contextlib.suppress(Exception):
                    await conn.ws.send_bytes(self._frame(CONTROL, service, [("type", "pong")], pong))
        elif record.method == DATA:
            self._on_ack(conn, record)
        else:
            self._error(f"conn {conn.number}: unexpected frame method {record.method} headers {headers}")

    def _on_ack(self, conn: _Conn, frame: ClientFrame) -> None:
        message_id = frame.headers.get("message_id", "")
        with self._lock:
            delivery = self._by_message.get(message_id)
        if delivery is None:
            self._error(f"conn {conn.number}: ack for unknown message_id {message_id!r}")
            return
        sent_at, sent_headers = delivery.sent[message_id]
        echoed = {k: v for k, v in frame.headers.items() if k != "biz_rt"}
        if echoed not in sent_headers or not frame.headers.get("biz_rt", "").isdigit():
            self._error(f"conn {conn.number}: ack headers {frame.headers} do not echo {sent_headers[0]} + biz_rt")
        try:
            code = int(json.loads(frame.payload)["code"])
        except (ValueError, KeyError, TypeError):
            self._error(f"conn {conn.number}: ack payload {frame.payload!r} is not a Response")
            return
        ack = Ack(conn.app_id, conn.number, message_id, delivery.event_id, code, frame.headers, frame.at - sent_at)
        with self._lock:
            self._acks.append(ack)
            delivery.acked = delivery.acked or code == 200

    # ---------------------------------------------------------------- pushing
    async def _push_many(
        self, app_id: str, events: Sequence[Event], parts: int, rev: bool, kind: str, gap: float = 0.0
    ) -> list[str]:
        ids = []
        for event in events:
            payload = event if isinstance(event, bytes) else json.dumps(event, ensure_ascii=False).encode()
            event_id = str(json.loads(payload).get("header", {}).get("event_id") or uuid.uuid4().hex)
            delivery = _Delivery(app_id, event_id, payload, parts, kind)
            with self._lock:
                self._deliveries[event_id] = delivery
            await self._send(delivery, rev)
            self._spawn(self._redeliver(delivery))
            ids.append(event_id)
            if gap:
                await asyncio.sleep(gap)
        return ids

    async def _send(self, delivery: _Delivery, rev: bool = False) -> None:
        with self._lock:
            conns = self._conns[delivery.app_id]
            conn = conns[-1] if conns else None
        if conn is None:
            raise RuntimeError(f"no connection for {delivery.app_id}")
        message_id, trace_id = uuid.uuid4().hex, uuid.uuid4().hex
        size = -(-len(delivery.payload) // delivery.fragments)
        chunks = [delivery.payload[i * size : (i + 1) * size] for i in range(delivery.fragments)]
        common = [("type", delivery.kind), ("message_id", message_id), ("trace_id", trace_id)]
        headers = [[*common, ("sum", str(delivery.fragments)), ("seq", str(seq))] for seq in range(delivery.fragments)]
        frames = [
            self._frame(DATA, self.service_ids[delivery.app_id], h, c) for h, c in zip(headers, chunks, strict=True)
        ]
        with self._lock:
            delivery.sent[message_id] = (time.monotonic(), [dict(h) for h in headers])
            self._by_message[message_id] = delivery
        for data in reversed(frames) if rev else frames:
            await conn.ws.send_bytes(data)

    async def _redeliver(self, delivery: _Delivery) -> None:
        for _ in range(self.knobs.max_redeliveries):
            if self.knobs.redeliver_after is None:
                return
            await asyncio.sleep(self.knobs.redeliver_after)
            if not delivery.acked:
                await self._app_up[delivery.app_id].wait()  # redelivered once the app is connected again
            if delivery.acked:
                return
            with contextlib.suppress(Exception):
                await self._send(delivery)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_app(self, app_id: str, *, abort: bool) -> None:
        with self._lock:
            conns = list(self._conns[app_id])
        for conn in conns:
            if abort and conn.request.transport is not None:
                conn.request.transport.abort()
            elif not abort:
                await conn.ws.close()
