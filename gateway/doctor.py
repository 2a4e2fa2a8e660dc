"""`switchboard doctor`: checks everything an operator would otherwise debug by hand."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from typing import Literal

from adapters.base import Adapter
from gateway.config import Settings, config_path, env_snapshot, load_settings, section_enabled
from gateway.errors import ConfigError, GatewayError

Status = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    status: Status
    name: str
    detail: str


def check_sqlite_vec() -> Check:
    """sqlite-vec needs a SQLite build that can load extensions (the stdlib one here often cannot).

    It indexes the users' memory notes (gateway/store/note_vectors.py); without it the service runs
    and recalls notes by recency, hence a warning and not a failure.
    """
    try:
        import sqlite_vec

        try:
            import pysqlite3.dbapi2 as driver
        except ImportError:
            driver = sqlite3
        conn = driver.connect(":memory:")
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        vec_version = conn.execute("select vec_version()").fetchone()[0]
        conn.close()
    except Exception as exc:
        return Check(
            "warn",
            "sqlite-vec",
            f"cannot load on this Python ({type(exc).__name__}: {exc}): memory notes are recalled by recency only",
        )
    return Check("ok", "sqlite-vec", f"loadable ({vec_version}, via {driver.__name__}): memory recall by meaning")


async def check_storage(settings: Settings) -> list[Check]:
    """Open the database (applying migrations), prove it is writable, report dead letters."""
    from gateway.store.migrations import MIGRATIONS
    from gateway.store.sqlite_db import SqliteDatabase
    from gateway.store.sqlite_outbox import SqliteOutbox

    db = SqliteDatabase(settings.database_path, synchronous=settings.storage.synchronous)
    try:
        await db.open(MIGRATIONS)
        await db.probe_write()  # a real page write to the database file (a TEMP table would not touch it)
        outbox = SqliteOutbox(db)
        stats = await outbox.stats()
        letters = await outbox.dead_letters(5)
    except Exception as exc:
        return [Check("FAIL", "database", f"{settings.database_path}: {exc}")]
    finally:
        await db.close()
    checks = [Check("ok", "database", f"{settings.database_path} writable; {stats.pending} replies pending")]
    if stats.dead:
        detail = "; ".join(f"{d.idempotency_key} ({d.platform}): {d.reason}" for d in letters)
        checks.append(Check("warn", "dead letters", f"{stats.dead} undeliverable replies. Latest: {detail}"))
    else:
        checks.append(Check("ok", "dead letters", "none"))
    return checks


async def check_llm(settings: Settings, env: dict[str, str], call: bool) -> Check:
    """Configured, and answering a 1-token request."""
    from gateway.app import build_llm

    llm = build_llm(settings, env, inline=True)
    if not llm.is_configured():
        return Check("FAIL", "llm", f"{llm.describe()}. Configure llm.profiles in the config file if needed.")
    if not call:
        return Check("ok", "llm", f"configured: {llm.describe()} (not called)")
    try:
        model = await asyncio.wait_for(llm.ping(), timeout=60)
    except GatewayError as exc:
        return Check("FAIL", "llm", f"{llm.describe()}: {exc}")
    except Exception as exc:
        return Check("FAIL", "llm", f"{llm.describe()}: {getattr(exc, 'user_message', type(exc).__name__)}")
    return Check("ok", "llm", f"{llm.describe()} answered ({model})")


def check_agent(settings: Settings) -> list[Check]:
    """Skills, routing and the sandbox: what a tool-using turn will be able to do on this machine."""
    if not settings.agent.enabled:
        return [Check("ok", "agent", "disabled: turns are plain chat")]
    checks: list[Check] = []
    try:
        from agent_core.sandbox.isolation import IsolationLevel, detect_isolation

        report = detect_isolation()
        status: Status = "ok" if report.level >= IsolationLevel.BWRAP else "warn"
        checks.append(Check(status, "sandbox", report.describe()))
    except Exception as exc:
        checks.append(Check("FAIL", "sandbox", f"{type(exc).__name__}: {exc}"))
    try:
        import pysqlite3.dbapi2 as driver

        conn = driver.connect(":memory:")
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        conn.close()
        checks.append(Check("ok", "skill routing index", f"SQLite FTS5 via pysqlite3 (SQLite {driver.sqlite_version})"))
    except Exception as exc:
        checks.append(Check("FAIL", "skill routing index", f"no FTS5-capable SQLite driver: {exc}"))
    try:
        from agent_core.router.embed import WordLlamaEmbedder

        embedder = WordLlamaEmbedder()
        embedder.embed(["probe"])
        checks.append(Check("ok", "skill embeddings", f"offline {embedder.name} ({embedder.dim}-d), no download"))
    except Exception as exc:
        checks.append(Check("warn", "skill embeddings", f"unavailable, routing degrades to BM25: {exc}"))
    try:
        from agent_core.skills.library import SkillLibrary

        names = [m.name for m in SkillLibrary(settings.storage.data_dir / "skills").list()]
        detail = f"{len(names)} active: {', '.join(names[:8])}" if names else "empty (seeds are installed at start)"
        checks.append(Check("ok", "skill library", detail))
    except Exception as exc:
        checks.append(Check("FAIL", "skill library", f"{type(exc).__name__}: {exc}"))
    return checks


async def _probe_credentials(name: str, adapter: Adapter) -> list[Check]:
    """Adapters that can prove their credentials against the platform (a token fetch) do so here.

    The adapter is never started: starting would open long connections that displace the running
    service's own (platforms allow one per bot) and would mount routes nobody serves.
    """
    probe = getattr(adapter, "check_credentials", None)
    if probe is None:
        return []
    import aiohttp

    async with aiohttp.ClientSession() as http:
        try:
            results: dict[str, str] = await asyncio.wait_for(probe(http), 30)
        except Exception as exc:
            return [Check("FAIL", f"adapter {name}", f"credential check failed: {type(exc).__name__}: {exc}")]
    return [
        Check("FAIL" if problem else "ok", f"adapter {name} bot {bot}", problem or "credentials accepted")
        for bot, problem in sorted(results.items())
    ]


async def check_adapters(settings: Settings, env: dict[str, str], *, probe: bool = True) -> list[Check]:
    """Every enabled adapter builds from its config with its credentials present (and accepted, if probed)."""
    import adapters as registry

    checks: list[Check] = []
    for name, raw in settings.adapters.items():
        try:
            if not section_enabled(raw):
                continue
        except ConfigError as exc:
            checks.append(Check("FAIL", f"adapter {name}", str(exc)))
            continue
        try:
            adapter = registry.load(name).create(raw, env)
        except (ConfigError, KeyError) as exc:
            checks.append(Check("FAIL", f"adapter {name}", str(exc)))
            continue
        checks.append(Check("ok", f"adapter {name}", "configured, credentials present"))
        if probe:
            checks += await _probe_credentials(name, adapter)
    return checks


async def run_doctor(config: str | None, *, llm_call: bool = True) -> int:
    """Print every check; exit status 1 when any failed."""
    env = env_snapshot()
    path = config_path(config, env)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"FAIL  config: {exc}")
        return 1
    checks = [Check("ok", "config", f"{path or 'built-in defaults'} is valid")]
    checks += await check_storage(settings)
    checks.append(check_sqlite_vec())
    checks.append(await check_llm(settings, env, llm_call))
    checks += await asyncio.to_thread(check_agent, settings)
    checks += await check_adapters(settings, env, probe=llm_call)
    for c in checks:
        print(f"{c.status:<4}  {c.name}: {c.detail}")
    failed = [c for c in checks if c.status == "FAIL"]
    print(f"\n{len(checks) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
