"""DingTalk Stream mode for one robot app, driven natively on asyncio and aiohttp (wire shapes in `stream_frames`).

Why not the `dingtalk-stream` SDK: it acks a push only after its handler's `process()` returned (its async variant
acks before anything is stored), so it cannot tell "journaled" from "processed"; its reply helpers call blocking
`requests` on the event loop; it reconnects after a fixed 10 s; its endpoints are frozen at import.

Here each push runs `on_message` in its own bounded, tracked task and is acked only once that returned (stored);
if it raises nothing is acked (DingTalk re-pushes EVENTs, never bot messages). One writer per socket sends the acks.
`disconnect` opens the next socket before retiring the old one, so nothing pushed meanwhile is lost; a socket
silent for `idle_timeout` is presumed dead; failures back off exponentially with full jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import aiohttp

from adapters.dingtalk import stream_frames as sf
from adapters.dingtalk.stream_frames import AckResult, StreamMessage

__all__ = ["AckResult", "OnMessage", "StreamConnection", "StreamMessage"]

log = logging.getLogger(__name__)

OnMessage = Callable[[StreamMessage], Awaitable[AckResult | None]]
_Socket = aiohttp.ClientWebSocketResponse[bool]
_T = TypeVar("_T")
HEALTHY_AFTER = 60.0  # a connection that lived this long (or delivered a message) starts the backoff over
_End = Literal["dropped", "idle", "switch", "closed"]  # switch: the server asked us to move to a new socket


@dataclass(eq=False)
class _Link:
    ws: _Socket
    began: float
    heard: float  # clock() of the last frame received
    outbox: asyncio.Queue[tuple[str, bool]] = field(default_factory=asyncio.Queue)  # (frame, is a message ack)
    pending: set[asyncio.Task[None]] = field(default_factory=set)  # deliveries that will ack on this socket
    switch: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # reader, writer
    delivered: bool = False
    paused: bool = False  # the reader waits for a delivery slot: the silence is ours, not the server's


class StreamConnection:
    """Keeps one app's Stream connection up and feeds its pushes to `on_message`, acking each once stored."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        open_url: str,
        client_id: str,
        client_secret: str,
        on_message: OnMessage,
        *,
        reconnect_min: float = 1.0,
        reconnect_max: float = 60.0,
        idle_timeout: float = 90.0,
        heartbeat: float = 30.0,  # WS-level pings; aiohttp drops the socket when a pong is missing
        connect_timeout: float = 10.0,
        close_timeout: float = 1.0,
        drain_timeout: float = 5.0,
        max_inflight: int = 256,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        self._http, self._open_url, self._on_message = session, open_url, on_message
        self.client_id, self._secret, self.name = client_id, client_secret, name or client_id
        self._min, self._max = reconnect_min, max(reconnect_min, reconnect_max)
        self._idle, self._heartbeat, self._connect_timeout = idle_timeout, heartbeat, connect_timeout
        self._close_timeout, self._drain = close_timeout, drain_timeout
        self._clock, self._sleep, self._rng = clock, sleep, rng or random.Random()
        self._slots = asyncio.Semaphore(max_inflight)
        self._link: _Link | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # deliveries and retirements of replaced sockets
        self._closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stopped.set()
        # Counters for metrics and readiness, monotonic over the object's life.
        self.connects = self.reconnects = self.messages = self.acks = self.pings = self.failures = 0
        self.last_error = ""  # kept after recovery so doctor can say why the link flapped

    @property
    def is_connected(self) -> bool:
        link = self._link
        return link is not None and not link.ws.closed

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set or `close` is called; never raises for network or handler trouble."""
        self._stopped.clear()
        watcher = asyncio.create_task(stop.wait())
        watcher.add_done_callback(lambda _: self._closing.set())  # cancelled only once run() ends anyway
        try:
            await self._loop()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self._shutdown()
            self._stopped.set()

    async def close(self) -> None:
        """Stop; in-flight messages get `drain_timeout` to be stored and acked before the socket closes."""
        self._closing.set()
        await self._stopped.wait()

    # ------------------------------------------------------------------ connection loop
    async def _loop(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            link = await self._connect()
            end = None if link is None else await self._serve(link)
            if link is not None and (link.delivered or self._clock() - link.began > HEALTHY_AFTER):
                attempt = 0
            if end in ("closed", "switch"):  # switch: a new socket right away
                continue
            attempt += 1
            delay = self._backoff(attempt)
            if end is not None:
                log.warning("dingtalk stream %s: connection %s, reconnecting in %.2fs", self.name, end, delay)
            await self._until_closing(self._sleep(delay))

    def _backoff(self, attempt: int) -> float:
        cap = min(self._max, self._min * 2.0 ** min(attempt - 1, 30))
        return self._rng.uniform(self._min, cap)

    async def _until_closing(self, aw: Awaitable[_T]) -> _T | None:
        """Await `aw`, but cancel it and return None as soon as we are closing."""
        task = asyncio.ensure_future(aw)
        closer = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({task, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closer.cancel()
            task.cancel()  # no-op once done
            await asyncio.gather(task, closer, return_exceptions=True)
        return None if task.cancelled() else task.result()

    async def _connect(self) -> _Link | None:
        """A fresh ticket and socket; a socket still draining after `disconnect` is retired once this one is up."""
        try:
            ws = await self._until_closing(self._open())
        except Exception as exc:  # logged and retried with backoff, whatever it was
            self.failures += 1
            self.last_error = (str(exc) if isinstance(exc, sf.OpenError) else f"{type(exc).__name__}: {exc}")[:300]
            level = logging.ERROR if isinstance(exc, sf.OpenError) and exc.status in (401, 403) else logging.WARNING
            expected = isinstance(exc, sf.OpenError | OSError | aiohttp.ClientError | TimeoutError)
            log.log(level, "dingtalk stream %s: connect failed: %s", self.name, self.last_error, exc_info=not expected)
            return None
        if ws is None:
            return None
        link = _Link(ws, self._clock(), self._clock())
        link.tasks = [asyncio.create_task(self._read(link)), asyncio.create_task(self._write(link))]
        self.connects, self.reconnects = self.connects + 1, self.connects
        old, self._link = self._link, link
        if old is not None:
            self._track(asyncio.create_task(self._retire(old, drain=True)))
        log.info("dingtalk stream %s: connected", self.name)
        return link

    async def _open(self) -> _Socket:
        body = sf.open_body(self.client_id, self._secret, sf.user_agent())
        async with asyncio.timeout(self._connect_timeout):
            async with self._http.post(self._open_url, json=body, headers={"Accept": "application/json"}) as resp:
                raw = await resp.read()
            endpoint, ticket = sf.parse_open(resp.status, raw)  # a ticket is single-use: one per connect
            timeout = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._close_timeout)
            url = sf.connect_url(endpoint, ticket)
            return await self._http.ws_connect(url, heartbeat=self._heartbeat, timeout=timeout)

    async def _serve(self, link: _Link) -> _End:
        waits: dict[asyncio.Task[object], _End] = {
            asyncio.create_task(self._closing.wait()): "closed",
            asyncio.create_task(link.switch.wait()): "switch",
            asyncio.create_task(self._watch(link)): "idle",
        }
        done, _ = await asyncio.wait({link.tasks[0], *waits}, return_when=asyncio.FIRST_COMPLETED)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        end: _End = next((e for t, e in waits.items() if t in done), "dropped")  # dict order is the priority
        if end != "switch":  # a switching socket keeps reading until its successor is up
            self._link = None
            await self._retire(link, drain=end == "closed")
        return end

    async def _watch(self, link: _Link) -> None:
        """Return once the socket delivered no frame (server pings included) for `idle_timeout`."""
        while True:
            link.heard = self._clock() if link.paused else link.heard
            left = link.heard + self._idle - self._clock()
            if left <= 0:
                self.last_error = f"no frame for {self._idle:g}s: socket presumed dead"
                return
            await self._sleep(left)

    async def _retire(self, link: _Link, *, drain: bool) -> None:
        """Read on while in-flight deliveries ack here (up to `drain_timeout`), flush, close (ends the reader)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain
        while drain and link.pending and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(link.pending), timeout=left)
        if drain and link.paused:  # the reader holds a bot message it could not hand over: say so, loudly
            log.error(
                "dingtalk stream %s: closing with a received message not yet journaled (%d still being journaled"
                " after %.1fs); DingTalk does not redeliver bot messages",
                self.name,
                len(link.pending),
                self._drain,
            )
        with suppress(TimeoutError):
            async with asyncio.timeout(self._close_timeout):
                await link.outbox.join()
        with suppress(Exception):
            async with asyncio.timeout(self._close_timeout * 2):
                await link.ws.close()
        for task in link.tasks:
            task.cancel()
        await asyncio.gather(*link.tasks, return_exceptions=True)

    async def _shutdown(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await self._retire(link, drain=True)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._drain)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ frames
    async def _read(self, link: _Link) -> None:
        async for msg in link.ws:
            link.heard = self._clock()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                log.debug("dingtalk stream %s: ignoring a %s message", self.name, msg.type.name)
                continue
            try:
                frame = sf.parse_frame(msg.data)
            except sf.FrameError as exc:
                log.warning("dingtalk stream %s: skipping a frame: %s", self.name, exc)
                continue
            await self._dispatch(link, frame)

    async def _dispatch(self, link: _Link, frame: StreamMessage) -> None:
        if frame.type == "SYSTEM":
            if frame.topic == "ping":
                link.outbox.put_nowait((sf.ack_frame(frame.message_id, frame.data), False))
            elif frame.topic == "disconnect":  # no reply: the server closes this socket ~10 s later
                log.info("dingtalk stream %s: server asked to reconnect, switching connections", self.name)
                link.switch.set()
            else:
                log.info("dingtalk stream %s: ignoring SYSTEM topic %r", self.name, frame.topic)
            return
        link.paused = True
        try:
            await self._slots.acquire()  # back-pressure: stop reading rather than drop a bot message
        finally:
            link.paused = False
        task = self._track(asyncio.create_task(self._deliver(link, frame)))
        link.pending.add(task)
        task.add_done_callback(link.pending.discard)
        task.add_done_callback(lambda _: self._slots.release())

    def _track(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver(self, link: _Link, frame: StreamMessage) -> None:
        try:
            result = await self._on_message(frame)
        except Exception:
            what = f"{frame.type} {frame.topic} {frame.message_id}"
            log.error("dingtalk stream %s: on_message failed for %s, not acked", self.name, what, exc_info=True)
            return
        link.delivered = True
        self.messages += 1
        link.outbox.put_nowait((sf.ack_frame(frame.message_id, sf.ack_data(frame.type, result)), True))

    async def _write(self, link: _Link) -> None:
        """The socket's only writer, so acks never interleave."""
        while True:
            text, is_ack = await link.outbox.get()
            try:
                await link.ws.send_str(text)
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                log.info("dingtalk stream %s: ack lost with its connection: %s", self.name, exc)
            else:
                self.acks, self.pings = self.acks + is_ack, self.pings + (not is_ack)
            finally:
                link.outbox.task_done()
