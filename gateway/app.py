"""Composition root: builds every component from Settings and runs them; no globals elsewhere.

Start order: database (migrations) -> stores -> LLM -> bus/turns -> resume journaled work
-> adapters (routes) -> outbox sender -> HTTP server. Stop order is the reverse, with a drain first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web

import adapters as adapter_registry
from adapters.base import Adapter, ReportsConnections
from agent_core.chat import ChatAgent
from agent_core.llm import LiteLLMClient, LLMClient
from agent_core.llm_process import ProcessLLMClient
from gateway.admission import AdaptiveTurnLimit, TurnLimit
from gateway.bus import SessionBus
from gateway.config import Settings, section_enabled
from gateway.errors import ConfigError
from gateway.host import RuntimeHost
from gateway.housekeeping import run_housekeeping
from gateway.http import build_app
from gateway.looplag import monitor_event_loop_lag
from gateway.memory_runtime import MemoryRuntime, open_memory
from gateway.messages import Target
from gateway.metrics import Metrics
from gateway.replies import ReplyChannels
from gateway.responders import PlainResponder, SwitchableResponder
from gateway.sender import OutboxSender, SenderSettings
from gateway.skills_runtime import build_skill_responder
from gateway.store.attachments import FileAttachmentStore
from gateway.store.migrations import MIGRATIONS
from gateway.store.sqlite_db import SqliteDatabase
from gateway.store.sqlite_journal import SqliteJournal
from gateway.store.sqlite_kv import SqliteKeyValueStore
from gateway.store.sqlite_ledger import SqliteTurnLedger
from gateway.store.sqlite_outbox import SqliteOutbox
from gateway.store.sqlite_traces import SqliteTraceStore
from gateway.tasks import TaskTracker
from gateway.turns import TurnRunner, TurnSettings
from sessions.manager import SessionManager
from sessions.store import SqliteSessionStore

log = logging.getLogger(__name__)


def build_adapters(settings: Settings, env: Mapping[str, str]) -> dict[str, Adapter]:
    """Instantiate every enabled adapter from its config section."""
    built: dict[str, Adapter] = {}
    for name, raw in settings.adapters.items():
        try:
            if not section_enabled(raw):
                continue
            module = adapter_registry.load(name)
        except (ConfigError, KeyError) as exc:
            raise ConfigError(f"adapters.{name}: {exc}") from None
        built[name] = module.create(raw, env)
    return built


def build_llm(settings: Settings, env: Mapping[str, str], *, inline: bool = False) -> LLMClient:
    """The LLM client for the configured profiles (in a worker process unless configured inline)."""
    if inline or settings.llm.isolation == "inline":
        return LiteLLMClient(settings.llm.profiles, settings.llm.default, env)
    return ProcessLLMClient(settings.llm.profiles, settings.llm.default, env)


class Runtime:
    """One running gateway."""

    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        *,
        adapters: Mapping[str, Adapter] | None = None,
        llm: LLMClient | None = None,
    ) -> None:
        self.settings = settings
        self._env = dict(env)
        self.metrics = Metrics()
        self.tasks = TaskTracker()
        self.llm_ready = asyncio.Event()
        self.db = SqliteDatabase(
            settings.database_path,
            synchronous=settings.storage.synchronous,
            on_batch=self.metrics.journal_batch_size.observe,
        )
        self.journal = SqliteJournal(self.db)
        self.outbox = SqliteOutbox(self.db)
        self.state = SqliteKeyValueStore(self.db)
        self.attachments = FileAttachmentStore(settings.storage.data_dir / "attachments")
        self.session_store = SqliteSessionStore(self.db)
        self.sessions = SessionManager(
            self.session_store,
            history_limit=settings.sessions.history_messages,
            idle_seconds=settings.sessions.idle_evict_seconds,
            max_cached=settings.sessions.max_cached,
        )
        self.llm: LLMClient = llm if llm is not None else build_llm(settings, env)
        self.adapters: dict[str, Adapter] = dict(adapters) if adapters is not None else build_adapters(settings, env)
        self.sender = OutboxSender(
            self.outbox,
            self.adapters,
            self.metrics,
            SenderSettings(
                base_backoff=settings.outbox.base_backoff,
                max_backoff=settings.outbox.max_backoff,
                send_timeout=settings.outbox.send_timeout,
                max_in_flight=settings.outbox.max_in_flight,
            ),
        )
        self.responder = SwitchableResponder(
            PlainResponder(ChatAgent(self.llm, system_prompt=settings.llm.system_prompt))
        )
        self.traces = SqliteTraceStore(self.db)
        self.turns = TurnRunner(
            journal=self.journal,
            ledger=SqliteTurnLedger(self.db),
            sessions=self.sessions,
            agent=self.responder,
            metrics=self.metrics,
            settings=TurnSettings(
                max_attempts=settings.bus.max_attempts,
                reply_deadline_seconds=settings.outbox.deadline_seconds,
            ),
            on_replies_queued=self.sender.wake,
            channels=ReplyChannels(self.adapters),
            llm_ready=self.llm_ready,
            traces=self.traces,
        )
        cap = settings.bus.max_concurrency
        lag_target = settings.bus.turn_lag_target_ms / 1000
        self.turn_limit = (
            AdaptiveTurnLimit(cap, lag_target=lag_target, on_change=self.metrics.turn_limit.set)
            if lag_target > 0
            else TurnLimit(cap)
        )
        self.metrics.turn_limit.set(cap)
        self.bus = SessionBus(
            self.turns,
            self.tasks.spawn,
            limit=self.turn_limit,
            max_backlog=settings.bus.max_backlog,
            mode=settings.bus.pending_mode,
        )
        self._accepting = False
        self._started = False
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._memory: MemoryRuntime | None = None
        self.port: int | None = None

    async def start(self) -> None:
        """Open storage, start adapters and the server, then resume unfinished turns.

        If any step fails, whatever was already started is closed again before the error propagates.
        """
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        self._started = True

    async def _start(self) -> None:
        await self.db.open(MIGRATIONS)
        self._http = aiohttp.ClientSession()
        host = RuntimeHost(
            journal=self.journal,
            bus=self.bus,
            metrics=self.metrics,
            tasks=self.tasks,
            http=self._http,
            group_scope=self.settings.sessions.group_scope,
            accepting=lambda: self._accepting,
            release_parked=self._release_parked,
            state=self.state,
            attachments=self.attachments,
        )
        self.tasks.spawn(monitor_event_loop_lag(self.metrics.event_loop_lag_seconds.set, stop=self._stop), "loop-lag")
        self.tasks.spawn(self._housekeeping(), "housekeeping")
        if isinstance(self.turn_limit, AdaptiveTurnLimit):
            self.tasks.spawn(self.turn_limit.run(self._stop), "turn-limit")
        self.tasks.spawn(self._warm_up_llm(), "llm-warm-up")
        if self.settings.agent.enabled:
            from agent_core.router import WordLlamaEmbedder

            embedder = WordLlamaEmbedder()  # one model (~80 MB) for skill routing and memory recall
            self._memory = await open_memory(self.db, self.settings.storage.data_dir, embedder, self.tasks.spawn)
            self.responder.target = await build_skill_responder(
                self.settings,
                self._env,
                self.llm,
                self.tasks.spawn,
                self._stop,
                memory=self._memory.store,
                embedder=embedder,
                outcomes=self.traces.skill_outcomes,
                audit=self.traces.record_run,
            )
        resumed = await self._resume()
        self._accepting = True
        for adapter in self.adapters.values():
            await adapter.start(host)
        # Only now: replies left in the outbox by a previous run would fail with "adapter not started".
        self.tasks.spawn(self.sender.run(self._stop), "outbox-sender")
        if self.settings.server.enabled:
            await self._start_server(host)
        log.info("switchboard started: adapters=%s resumed=%d", sorted(self.adapters), resumed)

    async def _start_server(self, host: RuntimeHost) -> None:
        app = build_app(
            host.routes,
            readiness=self.readiness,
            render_metrics=self.render_metrics,
            max_body_bytes=self.settings.server.max_body_bytes,
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host_name, port = self.settings.server.host, self.settings.server.port
        site = web.TCPSite(self._runner, host_name, port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"server.host/server.port: cannot listen on {host_name}:{port}: {exc.strerror}") from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.server.port
        log.info("listening on http://%s:%s", self.settings.server.host, self.port)

    async def _release_parked(self, target: Target) -> None:
        if await self.outbox.release(target, time.time()):
            self.sender.wake()

    async def _warm_up_llm(self) -> None:
        """Import the LLM library before resumed turns count an attempt: a crash loop during the slow
        import must not turn innocent messages into 'failed repeatedly' ones."""
        try:
            if self.llm.is_configured():
                await self.llm.warm_up()
        except Exception:
            log.exception("LLM warm-up failed; turns will import it on first use")
        finally:
            self.llm_ready.set()

    async def _resume(self) -> int:
        """Re-queue journaled messages whose turn never completed (after a crash)."""
        pending = await self.journal.pending()
        for entry in pending:
            self.bus.submit(entry.session_key, entry.inbound_id)
        if pending:
            log.info("resuming %d journaled messages", len(pending))
        self.sender.wake()
        return len(pending)

    async def readiness(self) -> dict[str, bool]:
        """DB writable, adapters connected, not draining."""
        try:
            await asyncio.wait_for(self.db.probe_write(), 5)
            db_ok = True
        except Exception:
            db_ok = False
        checks = {"database": db_ok, "accepting": self._accepting}
        for name, adapter in self.adapters.items():
            checks[f"adapter:{name}"] = adapter.is_connected()
        return checks

    async def refresh_gauges(self) -> None:
        """Update gauges that are read from state rather than counted."""
        stats = await self.outbox.stats()
        self.metrics.outbox_pending.set(stats.pending)
        self.metrics.outbox_dead.set(stats.dead)
        self.metrics.queue_depth.set(self.bus.backlog - self.bus.running)
        self.metrics.turns_running.set(self.bus.running)
        for name, adapter in self.adapters.items():
            self.metrics.adapter_connected.labels(adapter=name).set(1 if adapter.is_connected() else 0)
            links = adapter.connection_stats() if isinstance(adapter, ReportsConnections) else {}
            for connection, values in links.items():
                for kind, value in values.items():
                    if kind == "up":
                        self.metrics.connection_up.labels(adapter=name, connection=connection).set(value)
                    else:
                        self.metrics.connection_events.labels(adapter=name, connection=connection, kind=kind).set(value)

    async def render_metrics(self) -> tuple[bytes, str]:
        """Prometheus exposition."""
        await self.refresh_gauges()
        return self.metrics.render()

    async def _housekeeping(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), 30)
            except TimeoutError:
                report = await run_housekeeping(
                    self.journal,
                    self.outbox,
                    self.sessions,
                    now=time.time(),
                    retention_seconds=self.settings.storage.retention_seconds,
                    state=self.state,
                )
                if report.inbound_pruned or report.outbox_pruned:
                    log.info("housekeeping: %s", report)
                await self.refresh_gauges()

    async def wait_quiet(self, within: float) -> bool:
        """Wait until no turn is queued or running and nothing is due in the outbox."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            await asyncio.wait_for(self.bus.wait_idle(), max(0.01, deadline - time.monotonic()))
            next_due = await self.outbox.next_due_at()
            if self.sender.in_flight == 0 and (next_due is None or next_due > time.time() + 1):
                return True
            await asyncio.sleep(0.05)
        return False

    async def stop(self) -> None:
        """Drain: refuse new work, let running turns and due replies finish, then close everything.

        Safe to call twice, or after a failed start (which already closed what it had opened).
        """
        if not self._started:
            return
        self._started = False
        self._accepting = False
        drain = self.settings.server.drain_seconds
        try:
            quiet = await self.wait_quiet(drain)
        except TimeoutError:
            quiet = False
        if not quiet:
            log.warning("drain deadline (%.0fs) passed; unfinished work stays journaled for the next start", drain)
        await self._shutdown()
        log.info("switchboard stopped")

    async def _shutdown(self) -> None:
        """Close everything that was started, in reverse order; safe on a half-started runtime."""
        self._accepting = False
        self._stop.set()
        for name, adapter in self.adapters.items():
            try:
                await adapter.stop()
            except Exception:
                log.exception("adapter %s failed to stop cleanly", name)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.tasks.cancel_all()
        if self._memory is not None:
            await self._memory.close()
            self._memory = None
        await self.llm.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.db.close()
