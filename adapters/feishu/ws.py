"""The Feishu / Lark event long connection of one app, driven natively on asyncio and aiohttp.

Why not `lark_oapi.ws.Client`: it binds a module-global event loop when imported (one client per process,
unusable inside a running loop), runs each handler synchronously on that loop *before* acking (one slow
handler delays every ack and ping past Feishu's 3 s redelivery budget), and bootstraps with blocking
`requests`. Only its protobuf `Frame` definition is reused, behind the typed `ws_frames.FrameCodec`.

Protocol as lark-oapi 1.7.5 `ws/client.py` speaks it (wire facts in `ws_frames`): bootstrap POST, ping on
connect and every PingInterval (pongs may carry a new ClientConfig), events reassembled from fragments and
acked by echoing the frame with `{"code": 200}`, reconnect after up to ReconnectNonce of jitter and then every
ReconnectInterval. On purpose unlike the SDK: the ack goes out only once `on_event` has stored the event (500
if it raised, so Feishu redelivers), each event runs in its own tracked task so reads, pings and other acks
never wait for it; two ping intervals of silence mean a half-open socket; repeated failures back off
exponentially; auth and connection-limit refusals retry slowly instead of stopping; card frames get a 200.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

import aiohttp

from adapters.feishu import ws_frames as wf
from adapters.feishu.ws_frames import ClientConfig, Endpoint, FrameCodec, LinkError, Reassembler, WsFrame

__all__ = ["FEISHU_DOMAIN", "FeishuWsConnection", "FeishuWsSettings", "FeishuWsStats", "load_frame_class"]

log = logging.getLogger(__name__)

FEISHU_DOMAIN = "https://open.feishu.cn"
load_frame_class = wf.load_frame_class

OnEvent = Callable[[bytes], Awaitable[None]]
_Socket = aiohttp.ClientWebSocketResponse[bool]
_T = TypeVar("_T")


@dataclass(frozen=True)
class FeishuWsSettings:
    """Local timings (seconds) and bounds; the server's ClientConfig replaces the four marked `server`."""

    connect_timeout: float = 10.0  # bootstrap POST + WebSocket upgrade
    close_timeout: float = 2.0
    ping_interval: float = 120.0  # server
    reconnect_interval: float = 120.0  # server
    reconnect_nonce: float = 30.0  # server
    reconnect_count: int = -1  # server; after this many failures in a row only slow retries remain
    missed_pongs_allowed: int = 2
    healthy_after: float = 30.0  # a connection that lived this long starts the failure backoff over
    backoff_max: float = 600.0
    slow_retry: float = 300.0  # after an auth or connection-limit refusal
    ack_budget: float = 3.0  # Feishu redelivers an event not acked within this
    max_inflight: int = 1024  # events being stored at once; beyond it they are acked 500 (redelivered later)
    drain_timeout: float = 2.0  # on close: time in-flight events get to be stored and acked
    fragment_ttl: float = 5.0
    max_fragments: int = 128
    max_fragment_bytes: int = 16 * 1024 * 1024


@dataclass
class FeishuWsStats:
    """Counters for /metrics, monotonic over the life of the connection object."""

    events: int = 0  # stored by on_event and acked 200
    event_errors: int = 0  # on_event raised: acked 500
    late_acks: int = 0  # on_event took longer than ack_budget
    refused: int = 0  # acked 500 because max_inflight was reached
    cards: int = 0
    connects: int = 0
    reconnects: int = 0
    fragments_dropped: int = 0


class _End(Enum):
    FAILED = "failed"  # bootstrap or upgrade failed
    REFUSED = "refused"  # auth or limit refusal: retry slowly
    DROPPED = "dropped"
    HALF_OPEN = "half-open"
    CLOSED = "closed"  # close() was called


@dataclass(eq=False)
class _Link:
    ws: _Socket
    service_id: int
    heard: float  # loop time of the last frame received


class FeishuWsConnection:
    """Receives one app's events into `on_event` and acks each once it has been stored."""

    def __init__(
        self,
        app_id: str,
        app_secret: str,
        on_event: OnEvent,
        *,
        domain: str = FEISHU_DOMAIN,
        settings: FeishuWsSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.app_id = app_id
        self._secret = app_secret
        self._on_event = on_event
        self._domain = domain.rstrip("/")
        self._s = s = settings or FeishuWsSettings()
        self._rng = rng or random.Random()
        self._config = ClientConfig(s.reconnect_count, s.reconnect_interval, s.reconnect_nonce, s.ping_interval)
        self._fragments = Reassembler(ttl=s.fragment_ttl, max_parts=s.max_fragments, max_bytes=s.max_fragment_bytes)
        self._codec: FrameCodec | None = None
        self._connected = False
        self._failures = 0
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopped.set()
        self._reconfigured = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()  # event deliveries and acks
        self.stats = FeishuWsStats()
        # The most recent failure, kept after recovery so doctor can say why the link flapped.
        self.last_error = ""

    @property
    def connected(self) -> bool:
        """The socket is open and not known to be dead."""
        return self._connected

    @property
    def config(self) -> ClientConfig:
        """The timings in force (the server's, once it sent them)."""
        return self._config

    # ------------------------------------------------------------------ connection loop
    async def run(self, http: aiohttp.ClientSession) -> None:
        """Stay connected until `close`; never raises for network, protocol or handler trouble."""
        self._stopped.clear()
        try:
            if self._codec is None:
                try:
                    self._codec = FrameCodec(await load_frame_class())
                except Exception as exc:
                    self.last_error = f"cannot load lark-oapi frame definitions: {type(exc).__name__}: {exc}"[:300]
                    log.exception("feishu ws %s: %s", self.app_id, self.last_error)
                    await self._closing.wait()
                    return
            while not self._closing.is_set():
                end, lived = await self._attempt(http)
                if end is _End.CLOSED or self._closing.is_set():
                    break
                delay = self._delay(end, lived)
                log.info("feishu ws %s: link %s, reconnecting in %.2fs", self.app_id, end.value, delay)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            self._stopped.set()

    async def close(self) -> None:
        """Stop reading, give in-flight events `drain_timeout` to be stored and acked, close, await all tasks."""
        self._closing.set()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self._s.drain_timeout + self._s.close_timeout + 1.0)

    def _delay(self, end: _End, lived: float) -> float:
        """The SDK's jitter after a healthy connection; otherwise exponential from ReconnectInterval."""
        cfg = self._config
        jitter = self._rng.uniform(0.0, cfg.reconnect_nonce)
        if end in (_End.DROPPED, _End.HALF_OPEN) and lived >= self._s.healthy_after:
            self._failures = 0
            return jitter
        self._failures += 1
        cap = max(cfg.reconnect_interval, self._s.backoff_max)
        delay = min(cap, cfg.reconnect_interval * 2.0 ** min(self._failures - 1, 20)) + jitter
        if end is _End.REFUSED or 0 <= cfg.reconnect_count < self._failures:
            delay = max(delay, self._s.slow_retry)
        return delay

    async def _attempt(self, http: aiohttp.ClientSession) -> tuple[_End, float]:
        """One bootstrap + connection; returns how it ended and how long it was connected."""
        try:
            opened = await self._unless_closing(self._open(http))
        except LinkError as exc:
            self.last_error = str(exc)[:300]
            (log.error if exc.slow else log.warning)("feishu ws %s: %s", self.app_id, self.last_error)
            return (_End.REFUSED if exc.slow else _End.FAILED), 0.0
        except Exception as exc:
            expected = isinstance(exc, OSError | aiohttp.ClientError | TimeoutError | ValueError)
            self.last_error = f"connect failed: {type(exc).__name__}: {exc}"[:300]
            log.warning("feishu ws %s: %s", self.app_id, self.last_error, exc_info=not expected)
            return _End.FAILED, 0.0
        if opened is None:
            return _End.CLOSED, 0.0
        loop = asyncio.get_running_loop()
        began = loop.time()
        end = await self._session(*opened)
        return end, loop.time() - began

    async def _unless_closing(self, coro: Coroutine[Any, Any, _T]) -> _T | None:
        """Await `coro`, but cancel it and return None as soon as `close` is called."""
        task = asyncio.create_task(coro)
        closer = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({task, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, closer, return_exceptions=True)
        return None if task.cancelled() else task.result()

    async def _open(self, http: aiohttp.ClientSession) -> tuple[_Socket, Endpoint]:
        body = {"AppID": self.app_id, "AppSecret": self._secret}
        async with asyncio.timeout(self._s.connect_timeout):
            async with http.post(self._domain + wf.ENDPOINT_PATH, json=body, headers={"locale": "zh"}) as resp:
                raw = await resp.read()
            endpoint = wf.parse_endpoint(resp.status, raw)
            self._config = self._config.merged(endpoint.client_config)
            timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._s.close_timeout)
            try:
                ws = await http.ws_connect(endpoint.url, autoping=True, heartbeat=None, timeout=timeout)
            except aiohttp.WSServerHandshakeError as exc:
                raise wf.handshake_error(exc.status, exc.headers or {}) from exc
        return ws, endpoint

    async def _session(self, ws: _Socket, endpoint: Endpoint) -> _End:
        link = _Link(ws, endpoint.service_id, asyncio.get_running_loop().time())
        self._connected = True
        self.stats.connects += 1
        self.stats.reconnects = self.stats.connects - 1
        log.info("feishu ws %s: connected (device %s)", self.app_id, endpoint.device_id)
        reader = asyncio.create_task(self._read(link), name=f"feishu-ws-reader-{self.app_id}")
        pinger = asyncio.create_task(self._ping(link), name=f"feishu-ws-ping-{self.app_id}")
        closer = asyncio.create_task(self._closing.wait(), name=f"feishu-ws-closer-{self.app_id}")
        try:
            done, _ = await asyncio.wait({reader, pinger, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, pinger, closer):
                task.cancel()
            await asyncio.gather(reader, pinger, closer, return_exceptions=True)
            if self._closing.is_set() and self._tasks:
                await asyncio.wait(set(self._tasks), timeout=self._s.drain_timeout)  # acks still reach Feishu
            self._connected = False
            self._fragments.clear()
            self.stats.fragments_dropped = self._fragments.dropped
            with suppress(Exception):
                await ws.close()
        if closer in done:
            return _End.CLOSED
        if pinger in done:
            return _End.HALF_OPEN
        self.last_error = f"connection closed by the server (close code {ws.close_code})"
        log.warning("feishu ws %s: %s", self.app_id, self.last_error)
        return _End.DROPPED

    async def _ping(self, link: _Link) -> None:
        """Ping now and every PingInterval; return when nothing was heard for `missed_pongs_allowed` intervals."""
        loop = asyncio.get_running_loop()
        last_ping = float("-inf")
        while True:
            self._reconfigured.clear()
            interval = self._config.ping_interval
            silence = loop.time() - link.heard
            if silence >= interval * self._s.missed_pongs_allowed:
                self.last_error = f"nothing heard for {silence:.1f}s (ping interval {interval:g}s): half-open socket"
                log.warning("feishu ws %s: %s, reconnecting", self.app_id, self.last_error)
                return
            if loop.time() - last_ping >= interval:
                last_ping = loop.time()
                await self._send(link, wf.ping_frame(link.service_id))
                continue  # the send may have taken a while, and the config may have changed meanwhile
            wake = min(last_ping + interval, link.heard + interval * self._s.missed_pongs_allowed)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._reconfigured.wait(), max(0.0, wake - loop.time()))

    async def _read(self, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        async for msg in link.ws:
            if msg.type is aiohttp.WSMsgType.BINARY:
                link.heard = loop.time()
                try:
                    self._on_frame(link, msg.data)
                except Exception:
                    log.exception("feishu ws %s: frame handling failed", self.app_id)
            else:
                log.debug("feishu ws %s: ignoring a %s message", self.app_id, msg.type.name)

    # ------------------------------------------------------------------ frames
    def _on_frame(self, link: _Link, data: bytes) -> None:
        assert self._codec is not None
        try:
            frame = self._codec.decode(data)
        except Exception:
            log.warning("feishu ws %s: ignoring an undecodable frame (%d bytes)", self.app_id, len(data))
            return
        if frame.method == wf.METHOD_CONTROL:
            new = self._config.merged_json(frame.payload) if frame.type == wf.TYPE_PONG else self._config
            if new != self._config:
                log.info("feishu ws %s: server config %s", self.app_id, new)
                self._config = new
                self._reconfigured.set()
            return
        kind = frame.type
        if frame.method != wf.METHOD_DATA or kind not in (wf.TYPE_EVENT, wf.TYPE_CARD):
            log.debug("feishu ws %s: ignoring frame method %d type %r", self.app_id, frame.method, kind)
            return
        payload: bytes | None = frame.payload
        total = wf.int_header(frame, wf.H_SUM, 1)
        if total > 1 or total < 0:
            seq = wf.int_header(frame, wf.H_SEQ, 0)
            payload = self._fragments.add(frame.header(wf.H_MESSAGE_ID), total, seq, frame.payload)
            self.stats.fragments_dropped = self._fragments.dropped
        if payload is None:
            return
        if kind == wf.TYPE_CARD:
            self.stats.cards += 1
            log.debug("feishu ws %s: card callback %s acked and ignored", self.app_id, frame.header(wf.H_MESSAGE_ID))
            self._spawn(self._send(link, wf.ack_frame(frame, 200, 0)))
        elif len(self._tasks) >= self._s.max_inflight:
            self.stats.refused += 1
            log.warning(
                "feishu ws %s: %d events in flight, acking 500 (redelivered later)", self.app_id, len(self._tasks)
            )
            self._spawn(self._send(link, wf.ack_frame(frame, 500, 0)))
        else:
            self._spawn(self._deliver(link, frame, payload, link.heard))

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, link: _Link, frame: WsFrame, payload: bytes, arrived: float) -> None:
        """Store one event through `on_event`, then ack it: 200 stored, 500 not stored (Feishu redelivers).

        `biz_rt` reports arrival to ack (the SDK reports handler time only), so Feishu sees our queueing too.
        """
        loop, code = asyncio.get_running_loop(), 200
        try:
            await self._on_event(payload)
            self.stats.events += 1
        except Exception:
            code = 500
            self.stats.event_errors += 1
            log.warning("feishu ws %s: on_event failed, acking 500", self.app_id, exc_info=True)
        elapsed = loop.time() - arrived
        if elapsed > self._s.ack_budget:
            self.stats.late_acks += 1
            log.warning("feishu ws %s: event took %.1fs to store: Feishu will redeliver it", self.app_id, elapsed)
        if not await self._send(link, wf.ack_frame(frame, code, round(elapsed * 1000))):
            log.info("feishu ws %s: ack lost with its connection; Feishu will redeliver", self.app_id)

    async def _send(self, link: _Link, frame: WsFrame) -> bool:
        assert self._codec is not None
        if link.ws.closed:
            return False
        try:
            await link.ws.send_bytes(self._codec.encode(frame))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            log.debug("feishu ws %s: send failed: %s", self.app_id, exc)
            return False
        return True
