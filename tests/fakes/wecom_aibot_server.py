"""A protocol-exact fake of the WeCom AI-bot long-connection server (wss://openws.work.weixin.qq.com).

Runs on 127.0.0.1 (port 0) in its own thread with its own event loop (`ThreadedServer`), so it keeps
answering while the test's loop is busy. Speaks the JSON frames of WecomTeam/aibot-node-sdk
(`src/ws.ts`, `src/types/*.ts`; see `adapters/wecom/aibot_wire.py` for the sources):

    with FakeAIBotServer(bot_id="bot-1", secret="s3cret") as server:
        ... point AIBotConnection(ws_url=server.url) at it ...
        server.push(text_callback("hi", req_id="cb-1"))
        server.frames(req_id="cb-1")   # what the client answered, in order
        assert server.errors == []    # protocol violations the fake detected

It enforces what the real server is known to require: subscribe first with the right bot_id/secret
(else an error ack and close); replies only on a req_id it pushed (else 846605); stream content
<= 20480 UTF-8 bytes; no stream frame after `finish: true` for the same stream id. Violations are
recorded in `errors` and answered with errcode 40058 (the real code for these cases is unknown).
A second successful subscribe replaces the first connection with a `disconnected_event`, as WeCom does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.threaded import ThreadedServer

MAX_CONTENT_BYTES = 20480
ERR_BAD_CREDENTIALS = 40001
ERR_INVALID = 40058
ERR_INVALID_REQ_ID = 846605
ERR_STREAM_EXPIRED = 846608


@dataclass(frozen=True)
class Frame:
    """One frame the client sent."""

    conn: int
    cmd: str
    req_id: str
    body: dict[str, Any]
    at: float

    @property
    def stream(self) -> dict[str, Any]:
        value = self.body.get("stream")
        return value if isinstance(value, dict) else {}


@dataclass
class _Conn:
    number: int
    ws: web.WebSocketResponse
    request: web.Request
    authed: bool = False


@dataclass
class _Knobs:
    ack_pings: bool = True
    respond_delay: float = 0.0
    respond_errcodes: dict[str, int] = field(default_factory=dict)
    drop_acks: set[str] = field(default_factory=set)
    late_acks: dict[str, float] = field(default_factory=dict)  # req_id -> delay for its next ack only
    send_errcode: int = 0


def _req_id() -> str:
    return f"cb_{uuid.uuid4().hex[:16]}"


def _callback(body: dict[str, Any], req_id: str | None) -> dict[str, Any]:
    return {"cmd": "aibot_msg_callback", "headers": {"req_id": req_id or _req_id()}, "body": body}


def _message(msgtype: str, part: Any, *, userid: str, chatid: str, msgid: str | None, aibotid: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "msgid": msgid or uuid.uuid4().hex,
        "aibotid": aibotid,
        "chattype": "group" if chatid else "single",
        "from": {"userid": userid},
        "create_time": int(time.time()),
        "msgtype": msgtype,
        msgtype: part,
    }
    if chatid:
        body["chatid"] = chatid
    return body


def text_callback(
    content: str,
    *,
    userid: str = "zhangsan",
    chatid: str = "",
    msgid: str | None = None,
    req_id: str | None = None,
    aibotid: str = "test-bot",
) -> dict[str, Any]:
    """A text message callback: a DM, or a group message when `chatid` is given."""
    part = {"content": content}
    return _callback(_message("text", part, userid=userid, chatid=chatid, msgid=msgid, aibotid=aibotid), req_id)


def group_mention_callback(content: str, *, bot_name: str = "Switchboard", **kw: Any) -> dict[str, Any]:
    """A group message that @-mentions the bot; WeChat clients put U+2005 after the mention."""
    kw.setdefault("chatid", "wrkSFfCgAAAA-group")
    return text_callback(f"@{bot_name}\u2005{content}", **kw)


def mixed_callback(
    items: list[tuple[str, str]], *, userid: str = "zhangsan", req_id: str | None = None, msgid: str | None = None
) -> dict[str, Any]:
    """A mixed (图文混排) DM; items are ("text", content) or ("image", url)."""
    msg_item = [
        {"msgtype": "text", "text": {"content": value}}
        if kind == "text"
        else {"msgtype": "image", "image": {"url": value, "aeskey": "aes-" + uuid.uuid4().hex[:8]}}
        for kind, value in items
    ]
    body = _message("mixed", {"msg_item": msg_item}, userid=userid, chatid="", msgid=msgid, aibotid="test-bot")
    return _callback(body, req_id)


def event_callback(eventtype: str, *, userid: str = "zhangsan", req_id: str | None = None) -> dict[str, Any]:
    body = {
        "msgid": uuid.uuid4().hex,
        "create_time": int(time.time()),
        "aibotid": "test-bot",
        "from": {"userid": userid},
        "msgtype": "event",
        "event": {"eventtype": eventtype},
    }
    return {"cmd": "aibot_event_callback", "headers": {"req_id": req_id or _req_id()}, "body": body}


def enter_chat_event(*, userid: str = "zhangsan", req_id: str | None = None) -> dict[str, Any]:
    return event_callback("enter_chat", userid=userid, req_id=req_id)


async def eventually(predicate: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """Poll `predicate` from the test's loop (the fake runs elsewhere, so polling never blocks it)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class FakeAIBotServer(ThreadedServer):
    """The fake server; every public method is safe to call from the test's thread."""

    thread_name = "fake-wecom-aibot"
    not_ready_message = "fake WeCom AI-bot server did not start"

    def __init__(self, *, bot_id: str = "test-bot", secret: str = "test-secret") -> None:
        super().__init__()
        self.bot_id = bot_id
        self.secret = secret
        self.knobs = _Knobs()
        self._lock = threading.Lock()
        self._frames: list[Frame] = []
        self._errors: list[str] = []
        self._subscribes: list[tuple[int, bool, float]] = []
        self._callbacks: set[str] = set()
        self._finished: set[str] = set()
        self._conns = 0
        self._current: _Conn | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- lifecycle
    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._handle)
        return app

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super()._shutdown()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    # ---------------------------------------------------------------- inspection
    def frames(self, cmd: str | None = None, req_id: str | None = None) -> list[Frame]:
        """Frames the client sent (all connections), oldest first, optionally filtered."""
        with self._lock:
            return [f for f in self._frames if (cmd is None or f.cmd == cmd) and (req_id is None or f.req_id == req_id)]

    @property
    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    @property
    def subscribes(self) -> list[tuple[int, bool, float]]:
        """(connection number, accepted, time) for every subscribe frame."""
        with self._lock:
            return list(self._subscribes)

    @property
    def connections(self) -> int:
        """WebSocket connections opened so far."""
        with self._lock:
            return self._conns

    @property
    def has_client(self) -> bool:
        with self._lock:
            return self._current is not None

    # ---------------------------------------------------------------- actions
    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "server not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def push(self, frame: dict[str, Any]) -> str:
        """Send a callback frame to the subscribed client; returns its req_id."""
        req_id = str(frame["headers"]["req_id"])
        with self._lock:
            self._callbacks.add(req_id)
        self._call(self._send_current(frame))
        return req_id

    def expire(self, req_id: str, errcode: int = ERR_STREAM_EXPIRED) -> None:
        """Answer every later reply frame on `req_id` with `errcode` (846608: stream expired)."""
        with self._lock:
            self.knobs.respond_errcodes[req_id] = errcode

    def replace(self) -> None:
        """Another process subscribed with this bot: send `disconnected_event`, then close."""
        self._call(self._replace_current())

    def kill(self) -> None:
        """Drop the TCP connection without a close handshake."""
        self._call(self._kill_current())

    async def _send_current(self, frame: dict[str, Any]) -> None:
        conn = self._current
        if conn is None or not conn.authed:
            raise RuntimeError("no subscribed client")
        await conn.ws.send_str(json.dumps(frame, ensure_ascii=False))

    async def _replace_current(self) -> None:
        conn = self._current
        if conn is not None:
            await self._evict(conn)

    async def _evict(self, conn: _Conn) -> None:
        with contextlib.suppress(Exception):
            await conn.ws.send_str(json.dumps(event_callback("disconnected_event")))
            await conn.ws.close()

    async def _kill_current(self) -> None:
        conn = self._current
        if conn is not None and conn.request.transport is not None:
            conn.request.transport.abort()

    # ---------------------------------------------------------------- protocol
    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        with self._lock:
            self._conns += 1
            conn = _Conn(self._conns, ws, request)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_text(conn, msg.data)
                else:
                    self._error(f"conn {conn.number}: non-text frame {msg.type}")
        finally:
            with self._lock:
                if self._current is conn:
                    self._current = None
        return ws

    def _error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    async def _ack(self, conn: _Conn, req_id: str, errcode: int = 0, errmsg: str = "ok") -> None:
        frame = {"headers": {"req_id": req_id}, "errcode": errcode, "errmsg": errmsg}
        with contextlib.suppress(Exception):
            await conn.ws.send_str(json.dumps(frame))

    async def _on_text(self, conn: _Conn, raw: str) -> None:
        try:
            frame = json.loads(raw)
            cmd, req_id = frame["cmd"], frame["headers"]["req_id"]
            body = frame.get("body") or {}
            assert isinstance(cmd, str) and isinstance(req_id, str) and req_id and isinstance(body, dict)
        except (ValueError, KeyError, TypeError, AssertionError):
            self._error(f"conn {conn.number}: malformed frame {raw[:200]!r}")
            return
        with self._lock:
            self._frames.append(Frame(conn.number, cmd, req_id, body, time.monotonic()))
        if cmd == "aibot_subscribe":
            await self._subscribe(conn, req_id, body)
        elif not conn.authed:
            self._error(f"conn {conn.number}: {cmd} before a successful subscribe")
        elif cmd == "ping":
            if self.knobs.ack_pings:
                await self._ack(conn, req_id)
        elif cmd in ("aibot_respond_msg", "aibot_respond_welcome_msg", "aibot_send_msg"):
            errcode, errmsg = self._check_reply(cmd, req_id, body)
            if req_id not in self.knobs.drop_acks:
                delay = self.knobs.late_acks.pop(req_id, self.knobs.respond_delay)
                self._spawn(self._delayed_ack(conn, req_id, errcode, errmsg, delay))
        else:
            self._error(f"conn {conn.number}: unknown cmd {cmd!r}")

    async def _subscribe(self, conn: _Conn, req_id: str, body: dict[str, Any]) -> None:
        ok = body.get("bot_id") == self.bot_id and body.get("secret") == self.secret
        if not req_id.startswith("aibot_subscribe"):
            self._error(f"conn {conn.number}: subscribe req_id {req_id!r} lacks the cmd prefix")
        with self._lock:
            self._subscribes.append((conn.number, ok, time.monotonic()))
            previous, self._current = (self._current, conn) if ok else (None, self._current)
        if not ok:
            await self._ack(conn, req_id, ERR_BAD_CREDENTIALS, "invalid bot_id or secret")
            await conn.ws.close()
            return
        conn.authed = True
        await self._ack(conn, req_id)
        if previous is not None and previous is not conn:
            await self._evict(previous)

    def _check_reply(self, cmd: str, req_id: str, body: dict[str, Any]) -> tuple[int, str]:
        if cmd == "aibot_send_msg":
            content = body.get("markdown", {}).get("content") if body.get("msgtype") == "markdown" else None
            if not body.get("chatid") or not isinstance(content, str):
                return self._invalid(f"bad aibot_send_msg body {body!r}"[:300])
            if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
                return self._invalid("aibot_send_msg content over 20480 bytes")
            return self.knobs.send_errcode, "ok" if self.knobs.send_errcode == 0 else "fake error"
        with self._lock:
            known = req_id in self._callbacks
            forced = self.knobs.respond_errcodes.get(req_id)
        if not known:
            return ERR_INVALID_REQ_ID, "invalid req_id"
        if forced is not None:
            return forced, "stream message update expired" if forced == ERR_STREAM_EXPIRED else "fake error"
        if cmd == "aibot_respond_welcome_msg":
            return 0, "ok"
        stream = body.get("stream")
        if body.get("msgtype") != "stream" or not isinstance(stream, dict):
            return self._invalid(f"reply on {req_id} is not a stream: {body!r}"[:300])
        stream_id, finish, content = stream.get("id"), stream.get("finish"), stream.get("content", "")
        if not (isinstance(stream_id, str) and stream_id and isinstance(finish, bool) and isinstance(content, str)):
            return self._invalid(f"malformed stream on {req_id}: {stream!r}"[:300])
        if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
            return self._invalid(f"stream {stream_id} content is {len(content.encode('utf-8'))} bytes")
        with self._lock:
            if stream_id in self._finished:
                self._errors.append(f"stream {stream_id} got a frame after finish:true")
                return ERR_INVALID, "stream already finished"
            if finish:
                self._finished.add(stream_id)
        return 0, "ok"

    def _invalid(self, text: str) -> tuple[int, str]:
        self._error(text)
        return ERR_INVALID, "invalid parameter"

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delayed_ack(self, conn: _Conn, req_id: str, errcode: int, errmsg: str, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self._ack(conn, req_id, errcode, errmsg)
