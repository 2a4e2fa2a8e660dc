"""Lifecycle base for fakes that serve an aiohttp app from their own thread and event loop.

The server runs on 127.0.0.1:<port> (0: a free port) in a daemon thread with its own loop, so it keeps
answering while the test's thread or loop is blocked. Subclasses build their app in `_make_app` (or override
`_boot` entirely); `start()` re-raises whatever `_boot` raised, and `stop()` cleans the runner up, cancels the
handlers / background tasks still running on the fake's loop and joins the thread.

    class MyFake(ThreadedServer):
        thread_name = "my-fake"

        def _make_app(self) -> web.Application:
            app = web.Application()
            app.router.add_get("/", self._handle)
            return app
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["ThreadedServer"]


class ThreadedServer:
    """An aiohttp server on its own thread: start/stop, (async) context manager, `port` and `base_url`."""

    thread_name = "fake-server"
    ready_timeout: float | None = 10.0  # None: wait for the boot as long as it takes
    not_ready_message: str | None = None  # set: start() raises RuntimeError(this) when the boot times out

    def __init__(self, *, port: int = 0) -> None:
        self._requested_port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._boot())
            except BaseException as exc:  # surfaced to start()'s caller
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not ready.wait(self.ready_timeout) and self.not_ready_message is not None:
            raise RuntimeError(self.not_ready_message)
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def _make_app(self) -> web.Application:
        raise NotImplementedError

    async def _boot(self) -> None:
        await self._serve_app(self._make_app())

    async def _serve_app(self, app: web.Application) -> None:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self._requested_port).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            with contextlib.suppress(Exception):  # best effort: the loop is stopped below anyway
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = self._runner = None

    async def _shutdown(self) -> None:
        """Runs on the fake's loop: clean the runner up, then cancel whatever is still running there."""
        if self._runner is not None:
            await self._runner.cleanup()
        # Handlers whose client went away (e.g. still sleeping in an injected delay) may still be running.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ---- address ---------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} not started")
        return self._port

    @property
    def base_url(self) -> str:
        """ "http://127.0.0.1:PORT"."""
        return f"http://127.0.0.1:{self.port}"
