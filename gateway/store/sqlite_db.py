"""SQLite access that never blocks the event loop, with group commit for writes.

All writes go through one writer thread. Whatever queued up while the previous transaction
was being fsynced is committed together in the next one, so a burst of N inbound messages
costs a handful of fsyncs instead of N, and each caller still only resumes after its own
write is durable. If any operation in a batch fails, the batch is rolled back and each
operation is re-run in its own transaction, so one bad write never takes others with it.
Reads run on a small thread pool with their own connections (WAL lets them run beside writes).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from gateway.errors import StorageError

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
BatchOp = Callable[[sqlite3.Connection, list[Any]], list[Any]]
Migration = tuple[str, Callable[[sqlite3.Connection], None]]
log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class _Pending:
    op: Op | None
    future: asyncio.Future[Any]
    batch_op: BatchOp | None = None
    item: Any = None

    def run_alone(self, conn: sqlite3.Connection) -> Any:
        if self.batch_op is not None:
            return self.batch_op(conn, [self.item])[0]
        assert self.op is not None
        return self.op(conn)


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open a connection in autocommit mode (transactions are explicit) with WAL settings."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SqliteDatabase:
    """One SQLite file: a writer thread with group commit plus pooled readers."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        max_batch: int = 512,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self._synchronous = synchronous
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self, migrations: list[Migration]) -> None:
        """Create the file, apply pending migrations, start the writer and readers."""
        self._loop = asyncio.get_running_loop()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = await asyncio.to_thread(connect, self.path, self._synchronous)
            await asyncio.to_thread(apply_migrations, conn, migrations)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open the database {self.path}: {exc}") from exc
        self._writer = threading.Thread(target=self._write_loop, args=(conn,), name="sqlite-writer", daemon=True)
        self._writer.start()
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sqlite-reader")

    async def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` inside a write transaction; returns once it is committed (durable)."""
        loop = self._require_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Pending(op, fut))
        return await fut

    async def write_many(self, batch_op: BatchOp, item: Any) -> Any:
        """Like `write`, but the items queued together for the same `batch_op` run in one call.

        `batch_op(conn, items)` returns one result per item, in order. A burst of journal appends then
        costs one INSERT statement instead of one per message: each statement is a round trip through
        the GIL for the writer thread, and while the event loop is busy every such round trip waits for
        the loop to let go of it, which is what made commits slow under load, not the disk.
        """
        loop = self._require_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Pending(None, fut, batch_op, item))
        return await fut

    async def read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` on a reader connection off the event loop."""
        loop = self._require_loop()
        if self._readers is None:
            raise RuntimeError("database is not open")
        return await loop.run_in_executor(self._readers, self._run_read, op)

    async def probe_write(self) -> None:
        """Prove the database accepts writes now (a page is written, not just a transaction opened)."""
        stamp = time.time()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO health (id, checked_at) VALUES (1, ?)"
                " ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                (stamp,),
            )

        await self.write(op)

    async def close(self) -> None:
        """Finish queued writes, then close every connection."""
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        with self._conns_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("database is not open")
        return self._loop

    def _run_read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self._synchronous)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._reader_conns.append(conn)
        return op(conn)

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Pending] = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit_batch(conn, batch)
        conn.close()

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = _run_grouped(conn, batch)
            conn.execute("COMMIT")
            outcomes = [(p.future, True, r) for p, r in zip(batch, results, strict=True)]
        except Exception:
            _rollback(conn)
            outcomes = [self._commit_one(conn, p) for p in batch] if len(batch) > 1 else []
            if not outcomes:
                outcomes = [self._commit_one(conn, batch[0])]
        if self._on_batch is not None:
            self._on_batch(len(batch))
        self._require_loop().call_soon_threadsafe(_resolve, outcomes)

    @staticmethod
    def _commit_one(conn: sqlite3.Connection, pending: _Pending) -> tuple[asyncio.Future[Any], bool, Any]:
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = pending.run_alone(conn)
            conn.execute("COMMIT")
            return (pending.future, True, result)
        except Exception as exc:  # handed to the awaiting caller, not swallowed
            _rollback(conn)
            return (pending.future, False, exc)


def _run_grouped(conn: sqlite3.Connection, batch: list[_Pending]) -> list[Any]:
    """Run a batch in order; consecutive items of the same batch op go through it in one call."""
    results: list[Any] = []
    i = 0
    while i < len(batch):
        head = batch[i]
        if head.batch_op is None:
            results.append(head.run_alone(conn))
            i += 1
            continue
        j = i
        while j < len(batch) and batch[j].batch_op is head.batch_op:
            j += 1
        out = head.batch_op(conn, [p.item for p in batch[i:j]])
        if len(out) != j - i:
            raise RuntimeError(f"batch op returned {len(out)} results for {j - i} items")
        results.extend(out)
        i = j
    return results


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def _resolve(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in outcomes:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated DDL inside the caller's transaction (executescript would commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def apply_migrations(conn: sqlite3.Connection, migrations: list[Migration]) -> list[str]:
    """Apply each named migration once, in order, recording it; returns the names applied now."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
    applied: list[str] = []
    for name, migrate in migrations:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrate(conn)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, strftime('%s','now'))", (name,))
            conn.execute("COMMIT")
        except Exception:
            _rollback(conn)
            raise
        applied.append(name)
        log.info("applied storage migration %s", name)
    return applied
