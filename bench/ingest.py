"""Ingest benchmark: webhook ack throughput/latency against a bare-aiohttp ceiling, turn overhead, session memory.

    .venv/bin/python bench/ingest.py [--quick] [--json bench/results/ingest.json]

Every server under test runs in its own process, and so does the load generator (bench/loadgen.py):

* ceiling      bench/bare_server.py: aiohttp + the adapter's signature check, nothing else.
* gateway FULL `switchboard serve` with the webhook adapter and storage.synchronous FULL: the 200 is
               only sent after the SQLite transaction holding the message committed (WAL, fsync on
               commit). A fake LLM (instant echo) and a signature-checking callback receiver run in
               this process, so turns and outbox writes compete with ingest as they would in production.
* gateway NORMAL the same with synchronous NORMAL (no fsync per commit), for information.
* gateway FULL, LLM stalled: diagnostic; the LLM never answers, so no turn work competes with ingest.

Per round: ceiling, gateway FULL, gateway NORMAL, each with a closed-loop max-rate phase and an
open-loop phase at half of the max rate that same server reached in that round, then the stalled
row (closed loop only). Each gateway phase gets a fresh process and database, is SIGKILLed
afterwards, and every acked message id is then looked up in its database ("every ack durable"
against a process crash). Ratios are always against the ceiling measured in the same round. Then
sequential end-to-end turns and the per-session cache memory. See bench/README.md for what each
figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repo root importable
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import aiohttp  # noqa: E402

from adapters.webhook.signing import signed_headers  # noqa: E402
from tests.fakes.fake_llm import DelayReply, FakeLLM  # noqa: E402
from tests.fakes.webhook_peer import CallbackReceiver, make_payload  # noqa: E402

BENCH = Path(__file__).resolve().parent
PY = sys.executable
SECRET = "bench-bot-secret-5b0c1d2e3f405162"
SECRET_ENV = "BENCH_BOT_SECRET"
LLM_KEY_ENV = "BENCH_LLM_KEY"
BOT = "bench"
ROUTE = f"/webhooks/webhook/{BOT}"

_SCRIPT = Path(PY).parent / "switchboard"
SWITCHBOARD = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
)

GOAL_RATIO = 0.6
GOAL_P99_MS = 50.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    closed_seconds: float
    open_seconds: float
    warmup: int
    concurrency: int
    users: int
    e2e_messages: int
    memory_sessions: int
    history_per_session: int
    kinds: tuple[str, ...]

    @staticmethod
    def full() -> Plan:
        return Plan(2, 5.0, 5.0, 500, 64, 500, 200, 1000, 10, ("ceiling", "full", "normal", "stalled"))

    @staticmethod
    def quick() -> Plan:
        return Plan(1, 2.0, 2.0, 200, 64, 500, 50, 1000, 10, ("ceiling", "full", "stalled"))


# --------------------------------------------------------------------------- small helpers


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None when empty)."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[rank - 1]


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def system_busy() -> float:
    """CPU seconds all processes on the machine ran (user + nice + system, all CPUs, from /proc/stat).

    Interrupt and softirq time is left out: loopback TCP processing of our own traffic lands there.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4]]
    return sum(fields) / os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and its descendants that are alive now."""
    total = _proc_cpu(pid)
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    total += _tree_cpu(int(child))
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def wait_quiet(log: Callable[[str], None], *, busy_below: float = 0.15, within: float = 6.0) -> None:
    """Wait (bounded) until the machine is nearly idle, so another workload does not skew the next phase."""
    deadline = time.monotonic() + within
    while True:
        b0, t0 = system_busy(), time.monotonic()
        await asyncio.sleep(0.5)
        busy = (system_busy() - b0) / (time.monotonic() - t0)
        if busy < busy_below:
            return
        if time.monotonic() >= deadline:
            log(f"    machine still busy ({100 * busy:.0f}% of one core in use); measuring anyway")
            return


def source_state() -> tuple[str, str]:
    """(git commit, digest of the product sources on disk): the gateway runs whatever is on disk."""
    import hashlib

    digest = hashlib.sha256()
    for package in ("gateway", "adapters", "agent_core", "sessions"):
        for path in sorted((ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return commit or "unknown", digest.hexdigest()[:12]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    env[SECRET_ENV] = SECRET
    env[LLM_KEY_ENV] = "sk-bench-not-a-real-key-0000"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ServerProc:
    """A server subprocess that prints `... ready on port N` to stderr when listening."""

    READY = re.compile(rb"ready on port (\d+)")

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, timeout: float = 60.0) -> ServerProc:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=clean_env(), cwd=ROOT
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = self.READY.search(self.log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop(kill=True)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not become ready:\n{tail}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads) and of its live child processes.

        The gateway runs litellm in a worker child (llm.isolation: process); that CPU is the server's too.
        """
        assert self.proc is not None
        return _tree_cpu(self.proc.pid)

    def rss_mb(self) -> float | None:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return None

    def stop(self, *, kill: bool = False) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def gateway_config(
    path: Path, data_dir: Path, synchronous: str, llm_url: str, callback_url: str, *, max_concurrency: int = 32
) -> None:
    """The gateway's config file; everything not set here keeps its default (bus.max_concurrency is 32)."""
    config = {
        "server": {"host": "127.0.0.1", "port": 0, "drain_seconds": 2},
        "storage": {"data_dir": str(data_dir), "synchronous": synchronous},
        "bus": {"max_backlog": 10_000_000, "max_concurrency": max_concurrency},
        "llm": {
            "profiles": {
                "default": {
                    "model": "openai/fake-model",
                    "api_base": llm_url,
                    "api_key_env": LLM_KEY_ENV,
                    "retries": 0,
                    "timeout": 30,
                }
            }
        },
        "adapters": {
            "webhook": {
                "enabled": True,
                "bots": {BOT: {"secret_env": SECRET_ENV, "callback_url": callback_url, "timeout": 10}},
            }
        },
    }
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is valid YAML


def parse_metrics(text: str) -> dict[str, Any]:
    """The few gateway series the report uses, from the Prometheus exposition."""
    values: dict[str, float] = {}
    turn_buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        if name_labels.startswith("switchboard_turn_latency_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', name_labels)
            if le:
                turn_buckets.append((float(le.group(1)), float(value)))
            continue
        name = name_labels.split("{", 1)[0]
        values[name] = values.get(name, 0.0) + float(value)
    turns = values.get("switchboard_turn_latency_seconds_count", 0.0)
    batches = values.get("switchboard_journal_batch_size_count", 0.0)
    return {
        "_turn_buckets": sorted(turn_buckets),
        "_turn_sum": values.get("switchboard_turn_latency_seconds_sum", 0.0),
        "turns": int(turns),
        "turn_mean_ms": 1000 * values.get("switchboard_turn_latency_seconds_sum", 0.0) / turns if turns else None,
        "turn_p50_ms_bucketed": _bucket_quantile(turn_buckets, 0.50),
        "turn_p99_ms_bucketed": _bucket_quantile(turn_buckets, 0.99),
        "inbound_total": int(values.get("switchboard_inbound_total", 0.0)),
        "sent_total": int(values.get("switchboard_sent_total", 0.0)),
        "turn_errors_total": int(values.get("switchboard_turn_errors_total", 0.0)),
        "queue_depth": int(values.get("switchboard_queue_depth", 0.0)),
        "write_batches": int(batches),
        "mean_write_batch": values.get("switchboard_journal_batch_size_sum", 0.0) / batches if batches else None,
        "event_loop_lag_ms_last": 1000 * values.get("switchboard_event_loop_lag_seconds", 0.0),
    }


def turn_histogram_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """switchboard_turn_latency_seconds over the turns between two scrapes (warm-up excluded)."""
    start = dict(before.get("_turn_buckets", []))
    buckets = [(le, count - start.get(le, 0.0)) for le, count in after["_turn_buckets"]]
    turns = after["turns"] - before.get("turns", 0)
    total = after["_turn_sum"] - before.get("_turn_sum", 0.0)
    return {
        "turns": turns,
        "mean_ms": 1000 * total / turns if turns else None,
        "p50_ms_bucketed": _bucket_quantile(buckets, 0.50),
        "p99_ms_bucketed": _bucket_quantile(buckets, 0.99),
    }


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Linear interpolation inside the cumulative histogram bucket holding quantile q, in ms."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if le == float("inf"):
                return 1000 * prev_le
            frac = (target - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return 1000 * (prev_le + frac * (le - prev_le))
        prev_le, prev_count = le, count
    return None


def count_missing(db_path: Path, acked_file: Path) -> tuple[int, int]:
    """(acked ids, acked ids NOT found in the database's inbound journal)."""
    acked = {line for line in acked_file.read_text(encoding="utf-8").splitlines() if line}
    conn = sqlite3.connect(db_path)
    try:
        stored = {row[0] for row in conn.execute("SELECT platform_msg_id FROM inbound WHERE bot_id = ?", (BOT,))}
    finally:
        conn.close()
    return len(acked), len(acked - stored)


# --------------------------------------------------------------------------- load phases


class Bench:
    def __init__(self, plan: Plan, workdir: Path, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.workdir = workdir
        self.log = log
        self.llm: FakeLLM | None = None  # answers at once (echo)
        self.stalled_llm: FakeLLM | None = None  # answers only scripted replies at once, everything else never
        self._seq = 0

    def _next(self, label: str) -> Path:
        self._seq += 1
        path = self.workdir / f"{self._seq:02d}-{label}"
        path.mkdir(parents=True)
        return path

    async def _loadgen(
        self, url: str, prefix: str, mode: str, *, rate: float = 0.0, acked_out: Path | None = None
    ) -> dict[str, Any]:
        duration = self.plan.closed_seconds if mode == "closed" else self.plan.open_seconds
        argv = [
            PY,
            str(BENCH / "loadgen.py"),
            "--url",
            url + ROUTE,
            "--secret-env",
            SECRET_ENV,
            "--mode",
            mode,
            "--duration",
            str(duration),
            "--concurrency",
            str(self.plan.concurrency),
            "--users",
            str(self.plan.users),
            "--warmup",
            str(self.plan.warmup),
            "--prefix",
            prefix,
        ]
        if mode == "open":
            argv += ["--rate", f"{rate:.3f}"]
        if acked_out is not None:
            argv += ["--acked-out", str(acked_out)]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env(), cwd=ROOT
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=duration + 120)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}")
        return dict(json.loads(out.decode().strip().splitlines()[-1]))

    async def _measured(
        self, server: ServerProc, prefix: str, mode: str, rate: float, acked_out: Path | None = None
    ) -> dict[str, Any]:
        """One load generator run, plus where the machine's CPU went meanwhile (in % of one core)."""
        await wait_quiet(self.log)
        sys0, srv0, own0, kids0 = system_busy(), server.cpu_seconds(), self_cpu(), children_cpu()
        t0 = time.perf_counter()
        result = await self._loadgen(server.url, prefix, mode, rate=rate, acked_out=acked_out)
        wall = time.perf_counter() - t0
        srv, own, kids = server.cpu_seconds() - srv0, self_cpu() - own0, children_cpu() - kids0
        result["server_cpu_pct_whole_run"] = 100 * srv / wall
        result["bench_process_cpu_pct"] = 100 * own / wall  # fake LLM(s) + callback receiver threads
        result["other_processes_cpu_pct"] = 100 * max(0.0, system_busy() - sys0 - srv - own - kids) / wall
        return result

    async def ceiling(self, mode: str, rate: float = 0.0) -> dict[str, Any]:
        d = self._next(f"ceiling-{mode}")
        server = ServerProc(
            "bare server", [PY, str(BENCH / "bare_server.py"), "--secret-env", SECRET_ENV], d / "server.log"
        )
        await asyncio.to_thread(server.start)
        try:
            result = await self._measured(server, "c", mode, rate)
        finally:
            await asyncio.to_thread(server.stop)
        return result

    async def gateway(self, kind: str, mode: str, rate: float = 0.0) -> dict[str, Any]:
        """kind: "full" / "normal" (instant LLM, turns run during the load) or "stalled" (FULL, LLM never answers)."""
        assert self.llm is not None and self.stalled_llm is not None
        synchronous = "NORMAL" if kind == "normal" else "FULL"
        llm = self.stalled_llm if kind == "stalled" else self.llm
        d = self._next(f"gateway-{kind}-{mode}")
        with CallbackReceiver(SECRET.encode()) as receiver:
            config = d / "config.yaml"
            gateway_config(config, d / "data", synchronous, llm.base_url, receiver.url)
            server = ServerProc(
                f"gateway {synchronous}",
                [*SWITCHBOARD, "--config", str(config), "serve"],
                d / "server.log",
            )
            await asyncio.to_thread(server.start)
            acked_file = d / "acked.txt"
            try:
                await self._wait_ready(server.url)
                if kind == "stalled":
                    llm.enqueue("primed")  # only the priming turn gets an answer
                await self._prime(server.url, receiver)
                cb0 = len(receiver.attempts)
                result = await self._measured(server, "g", mode, rate, acked_file)
                result["callbacks_during_run"] = len(receiver.attempts) - cb0
                result["server_rss_mb"] = server.rss_mb()
                async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as resp:
                    result["metrics"] = {
                        k: v for k, v in parse_metrics(await resp.text()).items() if not k.startswith("_")
                    }
            finally:
                # A crash right after the last ack: every acked message must be in the database.
                await asyncio.to_thread(server.stop, kill=True)
            acked, missing = count_missing(d / "data" / "switchboard.sqlite3", acked_file)
            result["durability"] = {"acked_incl_warmup": acked, "missing_after_sigkill": missing}
        return result

    async def _wait_ready(self, url: str, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{url} never became ready")

    async def _prime(self, url: str, receiver: CallbackReceiver) -> None:
        """One message through a whole turn, so the lazy litellm import is done before anything is timed."""
        async with aiohttp.ClientSession() as session:
            await post_one(session, url + ROUTE, "prime-0", "prime-user")
        await asyncio.to_thread(receiver.wait_visible, 1, 60.0)

    async def end_to_end(self) -> dict[str, Any]:
        """Sequential messages, each from a new user: POST sent -> callback received, with an instant LLM."""
        assert self.llm is not None
        d = self._next("e2e-full")
        with CallbackReceiver(SECRET.encode()) as receiver:
            config = d / "config.yaml"
            gateway_config(config, d / "data", "FULL", self.llm.base_url, receiver.url)
            server = ServerProc(
                "gateway e2e",
                [*SWITCHBOARD, "--config", str(config), "serve"],
                d / "server.log",
            )
            await asyncio.to_thread(server.start)
            try:
                await self._wait_ready(server.url)
                url = server.url + ROUTE
                warm = 20
                e2e, ack, after_ack = [], [], []
                before: dict[str, Any] = {}
                async with aiohttp.ClientSession() as session:
                    for i in range(warm + self.plan.e2e_messages):
                        if i == warm:
                            async with session.get(server.url + "/metrics") as resp:
                                before = parse_metrics(await resp.text())
                        sent, acked, inbound_id = await post_one(session, url, f"e2e-{i}", f"e2e-user-{i}")
                        key = f"sb-{inbound_id}-0"
                        delivery = await asyncio.to_thread(_wait_key, receiver, key, 30.0)
                        if i >= warm:
                            e2e.append(delivery.received_at - sent)
                            ack.append(acked - sent)
                            after_ack.append(delivery.received_at - acked)
                    async with session.get(server.url + "/metrics") as resp:
                        after = parse_metrics(await resp.text())
            finally:
                await asyncio.to_thread(server.stop)

        def ms(values: list[float], q: float) -> float | None:
            v = pct(values, q)
            return None if v is None else 1000 * v

        return {
            "messages": len(e2e),
            "e2e_p50_ms": ms(e2e, 50),
            "e2e_p99_ms": ms(e2e, 99),
            "e2e_mean_ms": 1000 * statistics.fmean(e2e),
            "ack_p50_ms": ms(ack, 50),
            "ack_p99_ms": ms(ack, 99),
            "ack_to_callback_p50_ms": ms(after_ack, 50),
            "ack_to_callback_p99_ms": ms(after_ack, 99),
            "turn_latency_metric": turn_histogram_delta(before, after),
        }


async def post_one(session: aiohttp.ClientSession, url: str, message_id: str, user: str) -> tuple[float, float, int]:
    """POST one signed message; returns (wall time sent, wall time acked, inbound id)."""
    body = json.dumps(make_payload(message_id, f"dm-{user}", user, "ping")).encode()
    headers = signed_headers(SECRET.encode(), body, time.time())
    headers["Content-Type"] = "application/json"
    sent = time.time()
    async with session.post(url, data=body, headers=headers) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"message {message_id} answered {resp.status}: {data}")
    return sent, time.time(), int(data["id"])


def _wait_key(receiver: CallbackReceiver, key: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for delivery in reversed(receiver.deliveries):
            if delivery.idempotency_key == key:
                return delivery
        time.sleep(0.0005)
    raise TimeoutError(f"no callback for {key}")


# --------------------------------------------------------------------------- session memory


async def session_memory(sessions: int, history: int, workdir: Path) -> dict[str, Any]:
    """tracemalloc bytes held per cached session (SessionManager over the real SqliteSessionStore)."""
    from gateway.messages import SessionKey
    from gateway.store.interfaces import HistoryMessage
    from gateway.store.migrations import MIGRATIONS
    from gateway.store.sqlite_db import SqliteDatabase
    from sessions.manager import SessionManager
    from sessions.store import SqliteSessionStore, append_messages

    def key(i: int) -> SessionKey:
        return SessionKey(platform="webhook", bot_id=BOT, chat_id=f"dm-user-{i}", user_id=f"user-{i}")

    def turn_messages(i: int) -> list[HistoryMessage]:
        out = []
        for t in range(history // 2):
            out.append(HistoryMessage("user", f"Question {t} from user {i}: what is the status of ticket {i * 7 + t}?"))
            out.append(
                HistoryMessage(
                    "assistant",
                    f"Ticket {i * 7 + t} is in review; the last change was merged yesterday and the"
                    f" deployment is scheduled for Thursday (answer {t}).",
                )
            )
        return out

    db = SqliteDatabase(workdir / "memory.sqlite3", synchronous="NORMAL")
    await db.open(MIGRATIONS)
    try:
        now = time.time()
        content_chars = sum(len(m.content) for m in turn_messages(0))

        def write_all(conn: sqlite3.Connection) -> None:
            for i in range(sessions + 1):
                msgs = turn_messages(i)
                for j in range(0, len(msgs), 2):  # one turn = one user + one assistant message
                    append_messages(conn, key(i), msgs[j : j + 2], now)

        await db.write(write_all)
        clock = [0.0]
        manager = SessionManager(
            SqliteSessionStore(db), history_limit=20, idle_seconds=600, max_cached=10 * sessions, clock=lambda: clock[0]
        )
        await manager.load(key(sessions))  # warm the reader thread, its connection and statement cache
        manager.forget(key(sessions))
        gc.collect()
        tracemalloc.start()
        try:
            gc.collect()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(sessions):
                await manager.load(key(i))  # a fresh key object, as session_key_for builds per message
            gc.collect()
            loaded = tracemalloc.get_traced_memory()[0]
            cached = len(manager)
            clock[0] += 601
            evicted = manager.evict_idle()
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    finally:
        await db.close()
    return {
        "sessions": cached,
        "history_messages_each": history,
        "history_text_chars_each": content_chars,
        "bytes_baseline": base,
        "bytes_loaded": loaded,
        "bytes_per_session": (loaded - base) / sessions,
        "evicted": evicted,
        "bytes_after_evict": after,
        "bytes_retained_after_evict": after - base,
    }


# --------------------------------------------------------------------------- report


NAMES = {
    "ceiling": "ceiling (bare aiohttp)",
    "full": "gateway FULL",
    "normal": "gateway NORMAL (info)",
    "stalled": "gateway FULL, LLM stalled",
}


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-kind figures over rounds, ratios per round against that round's ceiling."""
    rows: dict[str, Any] = {}
    for kind in [k for k in NAMES if k in rounds[0]]:
        closed = [r[kind]["closed"] for r in rounds]
        opened = [r[kind]["open"] for r in rounds if r[kind].get("open")]
        ratios = [r[kind]["closed"]["acked_per_s"] / r["ceiling"]["closed"]["acked_per_s"] for r in rounds]
        row: dict[str, Any] = {
            "acked_per_s": statistics.fmean(c["acked_per_s"] for c in closed),
            "acked_per_s_rounds": [c["acked_per_s"] for c in closed],
            "closed_p50_ms": statistics.median(c["p50_ms"] for c in closed),
            "closed_p99_ms": max(c["p99_ms"] for c in closed),
            "ratio_rounds": ratios,
            "ratio": statistics.fmean(ratios),
            "non_2xx": sum(c["sent"] - c["acked"] for c in closed + opened),
        }
        if opened:
            row["half_rate"] = statistics.fmean(o["target_rate"] for o in opened)
            row["half_rate_achieved"] = statistics.fmean(o["acked_per_s"] for o in opened)
            row["half_p50_ms"] = statistics.median(o["p50_ms"] for o in opened)
            row["half_p99_ms"] = max(o["p99_ms"] for o in opened)  # worst round
        if kind != "ceiling":
            dur = [r[kind][m]["durability"] for r in rounds for m in ("closed", "open") if r[kind].get(m)]
            row["acked_checked"] = sum(x["acked_incl_warmup"] for x in dur)
            row["missing_after_sigkill"] = sum(x["missing_after_sigkill"] for x in dur)
        rows[kind] = row
    return rows


def render(report: dict[str, Any]) -> str:
    rows = report["summary"]
    machine = report["machine"]
    commit, digest = report["source_start"]
    lines = [
        f"commit {commit}, product sources {digest}",
        f"Ingest benchmark ({report['mode']} mode, {report['plan']['rounds']} round(s), "
        f"{report['plan']['concurrency']} connections, {report['plan']['users']} users, {machine['cpus']} CPUs, "
        f"load average {machine['loadavg_start'][0]:.2f} at start / {machine['loadavg_end'][0]:.2f} at end)",
        "",
        f"{'server':<27}{'max acked/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}"
        f"{'half rate/s':>12}{'p50 ms':>8}{'p99 ms':>8}{'acks lost':>12}",
    ]
    for kind, row in rows.items():
        lost = "-" if kind == "ceiling" else f"{row['missing_after_sigkill']}/{row['acked_checked']}"
        lines.append(
            f"{NAMES[kind]:<27}{fmt(row['acked_per_s'], 0):>12}{fmt(row['closed_p50_ms']):>8}"
            f"{fmt(row['closed_p99_ms']):>8}{row['ratio']:>7.2f}{fmt(row.get('half_rate_achieved'), 0):>12}"
            f"{fmt(row.get('half_p50_ms')):>8}{fmt(row.get('half_p99_ms')):>8}{lost:>12}"
        )
    lines.append("")
    lines.append("per round (acked/s, ratio to that round's ceiling):")
    for kind, row in rows.items():
        pairs = zip(row["acked_per_s_rounds"], row["ratio_rounds"], strict=True)
        per = ", ".join(f"{a:,.0f} ({r:.2f})" for a, r in pairs)
        lines.append(f"  {NAMES[kind]:<27}{per}")
    lines.append("")
    lines.append("max-rate phase, last round (CPU in % of one core over the loadgen run incl. its warm-up):")
    last = report["rounds"][-1]
    for kind in rows:
        c = last[kind]["closed"]
        line = (
            f"  {NAMES[kind]:<27}generator {c['generator_cpu_pct']:.0f}%, server {c['server_cpu_pct_whole_run']:.0f}%,"
            f" other processes {c['other_processes_cpu_pct']:.0f}%"
        )
        if kind == "ceiling" and c["generator_cpu_pct"] >= 90:
            line += "  (generator near one full core: the ceiling may be generator-bound)"
        if kind != "ceiling":
            m = c["metrics"]
            line += (
                f", fake LLM+receiver {c['bench_process_cpu_pct']:.0f}%;"
                f" turns done {m['turns']:,}, journal backlog left {m['queue_depth']:,},"
                f" mean write batch {fmt(m['mean_write_batch'])}"
            )
        lines.append(line)
    e2e = report.get("end_to_end")
    if e2e:
        t = e2e["turn_latency_metric"]
        lines += [
            "",
            f"End-to-end turn, instant fake LLM ({e2e['messages']} sequential messages, a new user each, FULL):",
            f"  POST sent -> callback received  p50 {fmt(e2e['e2e_p50_ms'])} ms   p99 {fmt(e2e['e2e_p99_ms'])} ms",
            f"    of which POST -> ack          p50 {fmt(e2e['ack_p50_ms'])} ms   p99 {fmt(e2e['ack_p99_ms'])} ms",
            f"    of which ack -> callback      p50 {fmt(e2e['ack_to_callback_p50_ms'])} ms"
            f"   p99 {fmt(e2e['ack_to_callback_p99_ms'])} ms",
            f"  switchboard_turn_latency_seconds over those turns: {t['turns']} turns, mean {fmt(t['mean_ms'])} ms,"
            f" p50~{fmt(t['p50_ms_bucketed'])} ms, p99~{fmt(t['p99_ms_bucketed'])} ms (bucket-interpolated)",
        ]
    mem = report.get("session_memory")
    if mem:
        lines += [
            "",
            f"Idle memory per cached session ({mem['sessions']} sessions x {mem['history_messages_each']} history"
            f" messages, {mem['history_text_chars_each']} text chars each; tracemalloc):",
            f"  {mem['bytes_per_session']:,.0f} bytes/session; after evict_idle() ({mem['evicted']} evicted)"
            f" {mem['bytes_retained_after_evict']:,} bytes stay allocated in total",
        ]
    notes = run_warnings(report["rounds"])
    if report["source_end"] != report["source_start"]:
        notes.insert(0, "PRODUCT SOURCES CHANGED DURING THE RUN: phases measured different code; rerun")
    if notes:
        lines += ["", "Measurement warnings (these phases are less trustworthy):"]
        lines += [f"  - {n}" for n in notes]
    lines += ["", "Goals:"]
    for goal in report["goals"]:
        lines.append(f"  [{'PASS' if goal['pass'] else 'FAIL'}] {goal['name']}: {goal['value']}")
    return "\n".join(lines)


def run_warnings(rounds: list[dict[str, Any]]) -> list[str]:
    """Phases where the generator or another workload may have limited what was measured."""
    notes = []
    for n, rnd in enumerate(rounds, 1):
        for kind, phases in rnd.items():
            for mode, r in phases.items():
                if not r:
                    continue
                where = f"round {n} {NAMES[kind]} {mode}"
                if r.get("pool_exhausted"):
                    notes.append(f"{where}: ran out of pre-signed messages before the end")
                if r["generator_cpu_pct"] >= 90:
                    notes.append(f"{where}: generator at {r['generator_cpu_pct']:.0f}% of a core (generator-bound?)")
                if r.get("worst_dispatch_lateness_ms", 0) > 20:
                    notes.append(
                        f"{where}: generator fell {r['worst_dispatch_lateness_ms']:.0f} ms behind its schedule"
                        " (counted in the latencies)"
                    )
                if r["other_processes_cpu_pct"] >= 20:
                    notes.append(f"{where}: other processes used {r['other_processes_cpu_pct']:.0f}% of a core")
    return notes


def goals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    full = summary["full"]
    return [
        {
            "name": f"gateway FULL max acked rate >= {GOAL_RATIO} x ceiling",
            "value": f"{full['ratio']:.2f}",
            "pass": full["ratio"] >= GOAL_RATIO,
        },
        {
            "name": "every ack durable (FULL; acked ids present after SIGKILL)",
            "value": f"{full['missing_after_sigkill']} of {full['acked_checked']} missing",
            "pass": full["missing_after_sigkill"] == 0 and full["acked_checked"] > 0,
        },
        {
            "name": f"gateway FULL p99 ack latency < {GOAL_P99_MS:.0f} ms at half the max rate",
            "value": f"{fmt(full.get('half_p99_ms'))} ms at {fmt(full.get('half_rate_achieved'), 0)}/s",
            "pass": full.get("half_p99_ms") is not None and full["half_p99_ms"] < GOAL_P99_MS,
        },
    ]


# --------------------------------------------------------------------------- main


async def run(plan: Plan, mode: str, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    started = time.monotonic()
    report: dict[str, Any] = {
        "mode": mode,
        "plan": plan.__dict__,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": os.getloadavg(),
        },
        "source_start": source_state(),
    }
    log(f"session memory ({plan.memory_sessions} sessions)...")
    report["session_memory"] = await session_memory(plan.memory_sessions, plan.history_per_session, workdir)
    bench = Bench(plan, workdir, log)
    never = DelayReply(3600.0)
    with FakeLLM(max_recorded=0) as llm, FakeLLM(max_recorded=0, default=lambda body: never) as stalled:
        bench.llm, bench.stalled_llm = llm, stalled
        rounds: list[dict[str, Any]] = []
        for n in range(plan.rounds):
            rnd: dict[str, Any] = {}
            for kind in plan.kinds:
                log(f"round {n + 1}/{plan.rounds}: {kind} closed loop...")
                closed = await (bench.ceiling("closed") if kind == "ceiling" else bench.gateway(kind, "closed"))
                rnd[kind] = {"closed": closed, "open": None}
                log(f"    {closed['acked_per_s']:,.0f} acked/s, p99 {fmt(closed['p99_ms'])} ms")
                if kind == "stalled":
                    continue
                half = closed["acked_per_s"] / 2
                log(f"round {n + 1}/{plan.rounds}: {kind} open loop at {half:,.0f}/s...")
                opened = await (bench.ceiling("open", half) if kind == "ceiling" else bench.gateway(kind, "open", half))
                rnd[kind]["open"] = opened
                log(f"    p50 {fmt(opened['p50_ms'])} ms, p99 {fmt(opened['p99_ms'])} ms")
            rounds.append(rnd)
        report["rounds"] = rounds
        log(f"end-to-end turns ({plan.e2e_messages} sequential messages)...")
        report["end_to_end"] = await bench.end_to_end()
    report["summary"] = summarise(report["rounds"])
    report["goals"] = goals(report["summary"])
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["source_end"] = source_state()
    report["wall_seconds"] = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Switchboard ingest benchmark (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="one short round, ~30 s")
    parser.add_argument("--json", type=Path, help="also write all figures as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        report = asyncio.run(run(plan, "quick" if args.quick else "full", workdir, log))
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))
    print(f"\n(total wall time {report['wall_seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
