"""One layer of the ingest path, alone, for bench/ingest_cost.py.

The real webhook adapter (routing, size bound, signature, strict schema, normalisation) behind a
minimal host, with one of two storage layers:

* `--storage none`     publish returns at once: what the adapter costs on top of aiohttp.
* `--storage journal`  publish appends to the real SQLite journal (WAL, synchronous FULL, group
                       commit on the writer thread) and returns after the commit, as the runtime's
                       host does: what durability costs, without the bus, turns, metrics or outbox.

    python bench/adapter_server.py --secret-env BENCH_BOT_SECRET --storage journal --data DIR

Prints `adapter server ready on port N` to stderr once listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web

from adapters.base import PublishResult
from adapters.webhook.adapter import WebhookAdapter
from adapters.webhook.config import WebhookConfig
from gateway.messages import InboundMessage, SessionScope, session_key_for
from gateway.store.interfaces import Journal
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_journal import SqliteJournal

BOT = "bench"


class LayerHost:
    """The part of AdapterHost the webhook adapter uses; `journal=None` stores nothing."""

    def __init__(self, http: aiohttp.ClientSession, journal: Journal | None) -> None:
        self.http = http
        self.routes: list[tuple[str, str, Any]] = []
        self._journal = journal
        self._stored = 0

    def is_accepting(self) -> bool:
        return True

    async def publish(self, msg: InboundMessage, *, refusable: bool = True) -> PublishResult:
        if self._journal is None:
            self._stored += 1
            return PublishResult(inbound_id=self._stored, duplicate=False)
        result = await self._journal.append(msg, session_key_for(msg, SessionScope.PER_USER))
        return PublishResult(inbound_id=result.inbound_id, duplicate=result.duplicate)

    def add_route(self, method: str, path: str, handler: Any) -> None:
        self.routes.append((method, path, handler))


async def serve(port: int, secret: bytes, storage: str, data: Path) -> None:
    db: SqliteDatabase | None = None
    journal: Journal | None = None
    if storage == "journal":
        db = SqliteDatabase(data / "journal.sqlite3", synchronous="FULL")
        await db.open(MIGRATIONS)
        journal = SqliteJournal(db)
    config = WebhookConfig(enabled=True, bots={BOT: {"secret_env": "UNUSED", "callback_url": "http://127.0.0.1:9/"}})
    async with aiohttp.ClientSession() as http:
        host = LayerHost(http, journal)
        adapter = WebhookAdapter(config, {BOT: secret})
        await adapter.start(host)  # type: ignore[arg-type]  # the slice of AdapterHost it uses
        app = web.Application()
        for method, path, handler in host.routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"adapter server ready on port {runner.addresses[0][1]}", file=sys.stderr, flush=True)
        await stop.wait()
        await runner.cleanup()
    if db is not None:
        await db.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--secret-env", required=True, help="environment variable holding the bot secret")
    parser.add_argument("--storage", choices=["none", "journal"], required=True)
    parser.add_argument("--data", type=Path, default=Path("."), help="directory for the journal database")
    args = parser.parse_args()
    asyncio.run(serve(args.port, os.environ[args.secret_env].encode("utf-8"), args.storage, args.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
