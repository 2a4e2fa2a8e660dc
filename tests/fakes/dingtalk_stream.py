"""A protocol-exact fake of DingTalk's Stream mode: the open-connection API plus the JSON-frame WebSocket.

Runs on 127.0.0.1 (port 0) in its own thread and event loop (`ThreadedFake`), so it keeps its clocks (ticket
expiry, EVENT re-push, server pings, delayed close after `disconnect`) while the test's loop is busy.

    with FakeDingTalkStream({"ding_a": "secret-a"}) as fake:
        conn = StreamConnection(http, fake.open_url, "ding_a", "secret-a", on_message)
        message_id = fake.push_bot("ding_a", "hi")
        await fake.async_wait_for(lambda: fake.acks(message_id))
        assert fake.violations == []

Behaviour (protocols.md B1/B2, dingtalk-stream 0.24.3):
* `POST /v1.0/gateway/connections/open` checks clientId/clientSecret (401 `InvalidAuthentication`), the
  subscriptions shape, `ua` and `localIp` (400 `InvalidParameter`), and returns `{endpoint, ticket}`; a
  ticket is single-use and valid `ticket_ttl` seconds. Tickets carry `+`, `/` and `=`, so an unquoted ticket fails.
* `GET /connect?ticket=` refuses unknown (401), used or expired (403) tickets before the upgrade.
* Pushes `{specVersion, type, headers{appId, connectionId, contentType, messageId, time, topic, ...}, data}`
  with `data` a JSON string go to the client's newest connection that was not told to `disconnect`
  (the told one if it is the only one). Acks are validated exactly; anything off lands in `violations`.
* EVENTs are re-pushed (same eventId, new messageId) every `event_repush_every` seconds until acked SUCCESS.
* `disconnect` sends SYSTEM disconnect and closes that socket `close_after_disconnect` seconds later.
* `silence` turns the newest socket into a black hole: nothing is sent on it (pings, pushes, WS pongs, the close
  handshake) and nothing it receives is looked at, but it stays open. `kill` aborts TCP without a close frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.feishu_api_server import ThreadedFake
from tests.fakes.feishu_api_state import Call, Reply

__all__ = ["OPEN_PATH", "Ack", "FakeDingTalkStream", "bot_message"]

OPEN_PATH = "/v1.0/gateway/connections/open"
BOT_TOPIC = "/v1.0/im/bot/messages/get"
SUB_TYPES = {"EVENT", "CALLBACK", "SYSTEM"}


@dataclass(frozen=True)
class Ack:
    """One valid ack a client sent."""

    client_id: str
    conn: int
    message_id: str
    kind: str  # CALLBACK | EVENT | ping
    data: str
    latency: float  # seconds from the push being written to its ack arriving
    event_id: str | None = None


@dataclass
class _Ticket:
    client_id: str
    expires: float
    used: bool = False


@dataclass(eq=False)
class _Conn:
    number: int
    client_id: str
    ticket: str
    ws: web.WebSocketResponse
    request: web.Request
    told_to_leave: bool = False
    silent: bool = False


@dataclass
class _Pushed:
    message_id: str
    kind: str  # CALLBACK | EVENT | ping | disconnect
    client_id: str
    conn: int
    data: str
    sent_at: float
    event_id: str | None = None
    acked: bool = False


@dataclass
class _Event:
    event_id: str
    client_id: str
    event_type: str
    data: str
    pushes: list[str] = field(default_factory=list)  # messageIds
    done: bool = False


def bot_message(
    text: str,
    *,
    robot_code: str = "ding_test",
    sender: str = "user1",
    conversation: str | None = None,
    group: bool = False,
    webhook_base: str = "http://127.0.0.1:9",
    msg_id: str | None = None,
) -> dict[str, Any]:
    """A bot message as DingTalk puts it in a CALLBACK's `data` (protocols.md B2 field names)."""
    now = int(time.time() * 1000)
    cid = conversation or ("cid" + base64.b64encode(f"{sender}:{group}".encode()).decode())
    msg: dict[str, Any] = {
        "conversationId": cid,
        "atUsers": [{"dingtalkId": "$:LWCP_v1:$bot" + robot_code}] if group else [],
        "chatbotCorpId": "dingcorp0001",
        "chatbotUserId": "$:LWCP_v1:$bot" + robot_code,
        "msgId": msg_id or "msg" + secrets.token_hex(12),
        "senderNick": f"Nick {sender}",
        "isAdmin": False,
        "senderStaffId": sender,
        "sessionWebhookExpiredTime": now + 90 * 60 * 1000,
        "createAt": now,
        "senderCorpId": "dingcorp0001",
        "conversationType": "2" if group else "1",
        "senderId": "$:LWCP_v1:$" + base64.b64encode(sender.encode()).decode(),
        "sessionWebhook": f"{webhook_base}/robot/sendBySession?session={secrets.token_hex(8)}",
        "text": {"content": (" " + text) if group else text},
        "robotCode": robot_code,
        "msgtype": "text",
    }
    if group:
        msg.update(isInAtList=True, conversationTitle="Test group")
    return msg


class FakeDingTalkStream(ThreadedFake):
    """The fake Stream platform for one or more apps; public methods are safe to call from the test's thread."""

    thread_name = "fake-dingtalk-stream"

    def __init__(
        self,
        apps: Mapping[str, str] | None = None,
        *,
        ticket_ttl: float = 90.0,
        close_after_disconnect: float = 10.0,
        event_repush_every: float = 3.0,
        max_repushes: int = 5,
        ping_every: float | None = None,
    ) -> None:
        super().__init__()
        self.apps = dict(apps or {"ding_test": "test-secret"})
        self.ticket_ttl, self.close_after_disconnect = ticket_ttl, close_after_disconnect
        self.event_repush_every, self.max_repushes, self.ping_every = event_repush_every, max_repushes, ping_every
        self._tickets: dict[str, _Ticket] = {}
        self._conns: dict[str, list[_Conn]] = {app: [] for app in self.apps}
        self._opened: dict[str, list[str]] = {app: [] for app in self.apps}  # tickets of accepted sockets
        self._pushed: dict[str, _Pushed] = {}
        self._events: dict[str, _Event] = {}
        self._acks: list[Ack] = []
        self._violations: list[str] = []
        self._refusals: list[tuple[int, str]] = []
        self._count = 0
        self._bg: set[asyncio.Task[None]] = set()

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/connect", self._socket)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)  # recorded + failure injection, then `_route`
        return app

    @property
    def open_url(self) -> str:
        return self.base_url + OPEN_PATH

    # ---------------------------------------------------------------- inspection
    def acks(
        self, message_id: str | None = None, *, client_id: str | None = None, kind: str | None = None
    ) -> list[Ack]:
        with self._cond:
            return [
                a
                for a in self._acks
                if message_id in (None, a.message_id) and client_id in (None, a.client_id) and kind in (None, a.kind)
            ]

    def event_acks(self, event_id: str) -> list[Ack]:
        with self._cond:
            return [a for a in self._acks if a.event_id == event_id]

    def event_pushes(self, event_id: str) -> int:
        with self._cond:
            return len(self._events[event_id].pushes)

    @property
    def violations(self) -> list[str]:
        with self._cond:
            return list(self._violations)

    @property
    def refusals(self) -> list[tuple[int, str]]:
        """WebSocket upgrades refused: (status, reason)."""
        with self._cond:
            return list(self._refusals)

    def live(self, client_id: str) -> int:
        """Sockets of the client open right now."""
        with self._cond:
            return len(self._conns[client_id])

    def tickets_used(self, client_id: str) -> list[str]:
        """The ticket of every socket accepted for the client, oldest first."""
        with self._cond:
            return list(self._opened[client_id])

    def opens(self, client_id: str | None = None) -> list[dict[str, Any]]:
        """Bodies of open-connection calls (all of them, accepted or not)."""
        bodies = [r.body for r in self.requests_to(OPEN_PATH + "$", "POST") if isinstance(r.body, dict)]
        return [b for b in bodies if client_id in (None, b.get("clientId"))]

    # ---------------------------------------------------------------- actions
    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        assert self._loop is not None, "server not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def push_bot(self, client_id: str, text: str = "hi", **fields: Any) -> str:
        """Push one bot message (CALLBACK); returns the frame's messageId."""
        return self.push_bots(client_id, [bot_message(text, robot_code=client_id, **fields)])[0]

    def push_bots(self, client_id: str, messages: Sequence[dict[str, Any]]) -> list[str]:
        """Push bot messages back to back, as fast as the fake's loop writes them."""
        data = [json.dumps(m, ensure_ascii=False) for m in messages]
        return list(self._call(self._push_many(client_id, "CALLBACK", BOT_TOPIC, data), timeout=60))

    def push_raw(self, client_id: str, text: str) -> None:
        """Send any text frame (garbage, unknown types) to the newest socket."""
        self._call(self._send_text(self._target(client_id), text))

    def push_event(self, client_id: str, event_type: str = "chat_update_title", payload: Any = None) -> str:
        """Push an EVENT, re-pushed until acked SUCCESS; returns its eventId."""
        return str(self._call(self._push_event(client_id, event_type, payload)))

    def ping(self, client_id: str) -> str:
        """SYSTEM ping with an opaque payload; returns its messageId."""
        return str(self._call(self._system(self._target(client_id), "ping")))

    def disconnect(self, client_id: str) -> str:
        """SYSTEM disconnect to the newest socket, which is closed `close_after_disconnect` seconds later."""
        return str(self._call(self._disconnect(client_id)))

    def kill(self, client_id: str) -> None:
        """Abort every socket of the client without a close frame."""
        with self._cond:
            conns = list(self._conns[client_id])
        for conn in conns:
            transport = conn.request.transport
            if transport is not None:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(transport.abort)

    def silence(self, client_id: str) -> None:
        """The newest socket goes silent (see the module docstring)."""
        with self._cond:
            self._conns[client_id][-1].silent = True

    # ---------------------------------------------------------------- open-connection API
    def _route(self, call: Call) -> Reply:
        if call.method == "POST" and call.path == OPEN_PATH:
            return self._open(call)
        return Reply(status=404, json={"code": "NotFound", "message": f"no route {call.method} {call.path}"})

    def _open(self, call: Call) -> Reply:
        body = call.body
        if not isinstance(body, dict):
            return self._bad("open: body is not a JSON object")
        client_id = body.get("clientId")
        if client_id not in self.apps or body.get("clientSecret") != self.apps[client_id]:
            error = {"code": "InvalidAuthentication", "message": "clientId or clientSecret is invalid"}
            return Reply(status=401, json={**error, "requestid": uuid.uuid4().hex})
        problem = _subscription_problem(body.get("subscriptions"))
        for key in ("ua", "localIp"):
            if not isinstance(body.get(key), str) or not body[key]:
                problem = problem or f"{key} missing"
        if problem:
            return self._bad(f"open: {problem}")
        ticket = base64.b64encode(secrets.token_bytes(16)).decode() + "+t/k"  # needs quote_plus
        self._tickets[ticket] = _Ticket(client_id, self.now() + self.ticket_ttl)
        return Reply(json={"endpoint": f"ws://127.0.0.1:{self.port}/connect", "ticket": ticket})

    def _bad(self, problem: str) -> Reply:
        self._violations.append(problem)
        return Reply(status=400, json={"code": "InvalidParameter", "message": problem})

    # ---------------------------------------------------------------- WebSocket
    async def _socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        with self._cond:
            found = self._tickets.get(ticket)
            refusal = (
                (401, "unknown ticket")
                if found is None
                else (403, "ticket already used")
                if found.used
                else (403, "ticket expired")
                if self.now() > found.expires
                else None
            )
            if refusal is not None:
                self._refusals.append(refusal)
            elif found is not None:
                found.used = True
        if refusal is not None or found is None:
            status, reason = refusal or (401, "unknown ticket")
            return web.json_response({"code": "InvalidTicket", "message": reason}, status=status)
        ws = web.WebSocketResponse(autoping=False, autoclose=False)
        await ws.prepare(request)
        with self._cond:
            self._count += 1
            conn = _Conn(self._count, found.client_id, ticket, ws, request)
            self._conns[conn.client_id].append(conn)
            self._opened[conn.client_id].append(ticket)
        if self.ping_every:
            self._spawn(self._ping_loop(conn, self.ping_every))
        try:
            await self._serve(conn)
        finally:
            with self._cond:
                self._conns[conn.client_id].remove(conn)
        return ws

    async def _serve(self, conn: _Conn) -> None:
        while True:
            msg = await conn.ws.receive()
            if msg.type is WSMsgType.TEXT:
                if not conn.silent:
                    self._on_text(conn, msg.data, time.monotonic())
            elif msg.type is WSMsgType.PING:
                if not conn.silent:
                    await conn.ws.pong(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                if conn.silent:  # a black hole never answers the close handshake; wait for TCP to go
                    await self._gone(conn)
                else:
                    await conn.ws.close()
                return
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            else:
                self._violation(conn, f"unexpected {msg.type.name} message")

    @staticmethod
    async def _gone(conn: _Conn) -> None:
        transport = conn.request.transport
        for _ in range(500):  # the peer drops TCP after its close timeout; give up after 10 s
            if transport is None or transport.is_closing():
                return
            await asyncio.sleep(0.02)

    def _violation(self, conn: _Conn, text: str) -> None:
        with self._cond:
            self._violations.append(f"{conn.client_id} conn {conn.number}: {text}")

    def _on_text(self, conn: _Conn, text: str, at: float) -> None:  # noqa: C901 - one check per rule
        try:
            frame = json.loads(text)
        except ValueError:
            return self._violation(conn, f"not JSON: {text[:100]!r}")
        if not isinstance(frame, dict):
            return self._violation(conn, f"not an object: {text[:100]!r}")
        headers = frame.get("headers")
        message_id = headers.get("messageId") if isinstance(headers, dict) else None
        with self._cond:
            pushed = self._pushed.get(message_id) if isinstance(message_id, str) else None
        if pushed is None:
            return self._violation(conn, f"ack for unknown messageId: {text[:200]!r}")
        assert isinstance(headers, dict)
        problems = []
        if frame.get("code") != 200 or isinstance(frame.get("code"), bool):
            problems.append(f"code {frame.get('code')!r} != 200")
        if headers.get("contentType") != "application/json":
            problems.append(f"contentType {headers.get('contentType')!r}")
        if not isinstance(frame.get("message"), str):
            problems.append("message is not a string")
        data = frame.get("data")
        if not isinstance(data, str):
            problems.append(f"data is not a JSON string: {data!r}")
        else:
            problems.extend(_data_problems(pushed, data))
        if pushed.kind == "disconnect":
            problems.append("disconnect must not be answered")
        if pushed.conn != conn.number:
            problems.append(f"acked on conn {conn.number}, pushed on conn {pushed.conn}")
        if pushed.acked:
            problems.append("acked twice")
        if problems:
            return self._violation(conn, f"ack {message_id} ({pushed.kind}): " + "; ".join(problems))
        assert isinstance(data, str)
        ack = Ack(
            conn.client_id, conn.number, pushed.message_id, pushed.kind, data, at - pushed.sent_at, pushed.event_id
        )
        with self._cond:
            pushed.acked = True
            self._acks.append(ack)
            if pushed.event_id is not None and json.loads(data)["status"] == "SUCCESS":
                self._events[pushed.event_id].done = True
            self._cond.notify_all()
        return None

    # ---------------------------------------------------------------- pushing
    def _target(self, client_id: str) -> _Conn:
        with self._cond:
            conns = self._conns[client_id]
            staying = [c for c in conns if not c.told_to_leave]
            if not conns:
                raise RuntimeError(f"no connection for {client_id}")
            return (staying or conns)[-1]

    async def _push(
        self, conn: _Conn, kind: str, topic: str, data: str, *, event_id: str | None = None, extra: Any = None
    ) -> str:
        message_id = f"{uuid.uuid4().hex[:8]}_{secrets.token_hex(4)}_{int(time.time() * 1000)}"
        headers = {
            "appId": conn.client_id,
            "connectionId": f"conn-{conn.number}",
            "contentType": "application/json",
            "messageId": message_id,
            "time": str(int(time.time() * 1000)),
            "topic": topic,
            **(extra or {}),
        }
        text = json.dumps({"specVersion": "1.0", "type": kind, "headers": headers, "data": data}, ensure_ascii=False)
        record_kind = topic if kind == "SYSTEM" else kind
        with self._cond:
            self._pushed[message_id] = _Pushed(
                message_id, record_kind, conn.client_id, conn.number, data, time.monotonic(), event_id
            )
        await self._send_text(conn, text)
        return message_id

    async def _send_text(self, conn: _Conn, text: str) -> None:
        if not conn.silent:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.send_str(text)

    async def _push_many(self, client_id: str, kind: str, topic: str, data: Sequence[str]) -> list[str]:
        return [await self._push(self._target(client_id), kind, topic, d) for d in data]

    async def _system(self, conn: _Conn, topic: str) -> str:
        data = json.dumps({"opaque": uuid.uuid4().hex}) if topic == "ping" else json.dumps({"reason": "restart"})
        return await self._push(conn, "SYSTEM", topic, data)

    async def _ping_loop(self, conn: _Conn, every: float) -> None:
        while not conn.ws.closed:
            await asyncio.sleep(every)
            if not conn.silent and not conn.ws.closed:
                await self._system(conn, "ping")

    async def _disconnect(self, client_id: str) -> str:
        conn = self._target(client_id)
        conn.told_to_leave = True
        message_id = await self._system(conn, "disconnect")

        async def close_later() -> None:
            await asyncio.sleep(self.close_after_disconnect)
            await conn.ws.close()

        self._spawn(close_later())
        return message_id

    async def _push_event(self, client_id: str, event_type: str, payload: Any) -> str:
        event_id = uuid.uuid4().hex
        data = json.dumps(payload if payload is not None else {"chatId": "chat1", "title": "new"}, ensure_ascii=False)
        event = _Event(event_id, client_id, event_type, data)
        with self._cond:
            self._events[event_id] = event
        await self._push_event_once(event)
        self._spawn(self._repush(event))
        return event_id

    async def _push_event_once(self, event: _Event) -> None:
        extra = {
            "eventId": event.event_id,
            "eventType": event.event_type,
            "eventCorpId": "dingcorp0001",
            "eventBornTime": str(int(time.time() * 1000)),
            "eventUnifiedAppId": event.client_id,
        }
        conn = self._target(event.client_id)
        message_id = await self._push(conn, "EVENT", event.event_type, event.data, event_id=event.event_id, extra=extra)
        with self._cond:
            event.pushes.append(message_id)

    async def _repush(self, event: _Event) -> None:
        for _ in range(self.max_repushes):
            await asyncio.sleep(self.event_repush_every)
            if event.done:
                return
            with contextlib.suppress(RuntimeError):  # no connection right now: try at the next tick
                await self._push_event_once(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)


def _subscription_problem(subs: Any) -> str | None:
    if not isinstance(subs, list) or not subs:
        return "subscriptions must be a non-empty list"
    for sub in subs:
        if not isinstance(sub, dict) or set(sub) != {"type", "topic"}:
            return f"subscription {sub!r} is not {{type, topic}}"
        if sub["type"] not in SUB_TYPES or not isinstance(sub["topic"], str) or not sub["topic"]:
            return f"bad subscription {sub!r}"
    return None


def _data_problems(pushed: _Pushed, data: str) -> list[str]:
    try:
        value = json.loads(data)
    except ValueError:
        return [f"data {data[:80]!r} is not JSON"]
    if pushed.kind == "ping" and data != pushed.data:
        return [f"ping data {data!r} does not echo {pushed.data!r}"]
    if pushed.kind == "EVENT":
        ok = isinstance(value, dict) and value.get("status") in ("SUCCESS", "LATER")
        if not ok or not isinstance(value.get("message"), str):
            return [f"EVENT ack data {data!r} is not {{status: SUCCESS|LATER, message}}"]
    return []
