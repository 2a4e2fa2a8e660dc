"""Console adapter: each stdin line is an inbound message, replies are printed.

It goes through the same journal, bus, turn and outbox as every platform, so `switchboard chat`
exercises the production pipeline. End of input ends the chat once every reply is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import TextIO

from pydantic import BaseModel, ConfigDict

from adapters.base import AdapterHost, ReplyStream, SendReceipt
from gateway.messages import ChatKind, InboundMessage, OutboundMessage, Target

LineReader = Callable[[], Awaitable[str | None]]


class ConsoleConfig(BaseModel):
    """`enabled`: read stdin (serve only does so when stdin is a terminal)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    user_id: str = ""
    bot_id: str = "console"


async def _stdin_line() -> str | None:
    """One line from stdin, read on a daemon thread.

    Not asyncio.to_thread: the default executor is joined at interpreter exit, so a reader blocked
    on a terminal would keep a stopped gateway alive until someone pressed Enter.
    """
    loop = asyncio.get_running_loop()
    line: asyncio.Future[str] = loop.create_future()

    def deliver(text: str) -> None:
        if not line.done():
            line.set_result(text)

    def read() -> None:
        try:
            text = sys.stdin.readline()
        except (OSError, ValueError):
            text = ""
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody is waiting
            loop.call_soon_threadsafe(deliver, text)

    threading.Thread(target=read, name="console-stdin", daemon=True).start()
    text = await line
    return text if text else None


class ConsoleAdapter:
    """Stdin/stdout chat as one direct conversation."""

    name = "console"

    def __init__(
        self,
        config: ConsoleConfig,
        *,
        user_id: str,
        read_line: LineReader = _stdin_line,
        out: TextIO | None = None,
        interactive: bool | None = None,
    ) -> None:
        self._config = config
        self._user_id = user_id
        self._read_line = read_line
        self._out = out or sys.stdout
        self._interactive = sys.stdin.isatty() if interactive is None else interactive
        self._run_id = uuid.uuid4().hex[:12]
        self._count = 0
        self.input_closed = asyncio.Event()
        self.sent: list[OutboundMessage] = []
        self._started = False

    def is_connected(self) -> bool:
        """Ready once started."""
        return self._started

    async def start(self, host: AdapterHost) -> None:
        """Begin reading input in a tracked task."""
        self._started = True
        host.spawn(self._read_loop(host), name="console-reader")

    async def stop(self) -> None:
        """Nothing to close: the reader task is cancelled by the host."""
        self._started = False

    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """No size limit worth cutting for: one reply is one message."""
        return [reply]

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """Replies are delivered whole."""
        return None

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        """Print the reply."""
        self.sent.append(msg)
        self._out.write(f"\nbot> {msg.text}\n")
        if self._interactive:
            self._out.write("you> ")
        self._out.flush()
        return SendReceipt(platform_msg_id=msg.idempotency_key)

    async def _read_loop(self, host: AdapterHost) -> None:
        if self._interactive:
            self._out.write("Switchboard chat. Type a message; Ctrl-D to quit.\nyou> ")
            self._out.flush()
        try:
            while (line := await self._read_line()) is not None:
                text = line.strip()
                if not text:
                    continue
                if text in ("/quit", "/exit"):
                    break
                self._count += 1
                await host.publish(
                    InboundMessage(
                        platform="console",
                        bot_id=self._config.bot_id,
                        platform_msg_id=f"{self._run_id}-{self._count}",
                        chat_id=self._user_id,
                        chat_kind=ChatKind.DIRECT,
                        sender_id=self._user_id,
                        sender_name=self._user_id,
                        text=text,
                    )
                )
        finally:
            self.input_closed.set()
