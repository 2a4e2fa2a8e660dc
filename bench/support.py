"""Plumbing shared by the ingest benchmark's phases: server processes, CPU accounting, gateway config, metrics.

Kept apart from ingest.py so that file reads as the measurement plan and nothing else. Everything
here looks at the servers from outside (their process, /proc, the config file they are given, their
/metrics text, their SQLite file) and imports no product module, so changing the gateway cannot
quietly change how it is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import resource
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-bot-secret-5b0c1d2e3f405162"
SECRET_ENV = "BENCH_BOT_SECRET"
LLM_KEY_ENV = "BENCH_LLM_KEY"
BOT = "bench"


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
    path: Path,
    data_dir: Path,
    synchronous: str,
    llm_url: str,
    callback_url: str,
    *,
    max_concurrency: int = 32,
    agent: bool = True,
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
    if not agent:
        config["agent"] = {"enabled": False}
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
