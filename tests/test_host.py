"""RuntimeHost.publish: refusals for platforms that retry, never for platforms that do not redeliver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from gateway.bus import SessionBus
from gateway.errors import BackpressureError
from gateway.host import RuntimeHost
from gateway.messages import ChatKind, InboundMessage, SessionKey, SessionScope
from gateway.metrics import Metrics
from gateway.store.attachments import FileAttachmentStore
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_journal import SqliteJournal
from gateway.store.sqlite_kv import SqliteKeyValueStore
from gateway.tasks import TaskTracker


def message(mid: str) -> InboundMessage:
    return InboundMessage(
        platform="chatapp", bot_id="b", platform_msg_id=mid, chat_id="c", chat_kind=ChatKind.DIRECT, sender_id=mid
    )


async def test_unrefusable_messages_are_journaled_while_draining_or_over_the_backlog_cap(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "h.sqlite3")
    await db.open(MIGRATIONS)
    gate = asyncio.Event()
    started: list[list[int]] = []

    async def handler(_key: SessionKey, ids: list[int]) -> None:
        started.append(ids)
        await gate.wait()

    tasks = TaskTracker()
    bus = SessionBus(handler, tasks.spawn, max_backlog=1)
    accepting = [True]
    journal = SqliteJournal(db)
    async with aiohttp.ClientSession() as http:
        host = RuntimeHost(
            journal=journal,
            bus=bus,
            metrics=Metrics(),
            tasks=tasks,
            http=http,
            group_scope=SessionScope.PER_USER,
            accepting=lambda: accepting[0],
            release_parked=lambda _t: asyncio.sleep(0),
            state=SqliteKeyValueStore(db),
            attachments=FileAttachmentStore(tmp_path / "att"),
        )
        try:
            await host.publish(message("m1"))  # fills the backlog (cap 1)
            with pytest.raises(BackpressureError):
                await host.publish(message("m2"))
            over_cap = await host.publish(message("m3"), refusable=False)  # journaled AND scheduled
            accepting[0] = False  # draining
            with pytest.raises(BackpressureError):
                await host.publish(message("m4"))
            draining = await host.publish(message("m5"), refusable=False)  # journaled, left for the next start
            await asyncio.sleep(0.05)
            pending = {e.message.platform_msg_id for e in await journal.pending()}
            assert pending == {"m1", "m3", "m5"}  # the refused ones were never stored
            assert sorted(i for ids in started for i in ids) == sorted([1, over_cap.inbound_id])
            assert draining.inbound_id not in {i for ids in started for i in ids}
        finally:
            gate.set()
            await bus.wait_idle()
            await tasks.cancel_all()
            await db.close()
