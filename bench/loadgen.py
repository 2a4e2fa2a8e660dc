"""Load generator process for bench/ingest.py (run by it; usable alone for ad-hoc runs).

Sends signed webhook messages to one URL over a keep-alive aiohttp connection pool and prints ONE
JSON object on stdout. All bodies and signatures are computed before the timed phase, so the
timed loop only does HTTP. Two modes:

* closed: `--concurrency` workers each send the next message as soon as the previous one was
  answered, for `--duration` seconds. Measures the maximum acked rate and the per-request latency.
* open: messages are scheduled at a fixed `--rate` for `--duration` seconds whatever the server
  does; latency is measured from each message's *scheduled* send time (no coordinated omission),
  so a server that falls behind shows it in the percentiles instead of slowing the generator down.

Every phase starts with `--warmup` unmeasured requests (connections opened, code paths warm); in
open mode they are paced at `--rate` too (at most about one second of them).
An acked message is one answered 2xx; `--acked-out FILE` writes their message ids, one per line,
so the caller can check them against the database afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from adapters.webhook.signing import signed_headers

TEXT = "Hello, could you summarise what changed in the deployment pipeline since last week? Thanks!"


@dataclass(frozen=True)
class Prepared:
    message_id: str
    body: bytes
    headers: dict[str, str]
    query: str = ""  # appended to the URL as is ("?a=1&b=2"); for callers whose signature is in the query


def prepare(prefix: str, count: int, users: int, secret: bytes, start: int = 0) -> list[Prepared]:
    """Signed requests from `users` distinct users (round-robin), with unique message ids."""
    now = time.time()
    out: list[Prepared] = []
    for i in range(start, start + count):
        user = f"user-{i % users}"
        message_id = f"{prefix}-{i}"
        payload = {
            "message_id": message_id,
            "chat_id": f"dm-{user}",
            "chat_type": "direct",
            "sender": {"id": user, "name": f"Bench {user}"},
            "text": f"{TEXT} (#{i})",
        }
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        headers = signed_headers(secret, body, now)
        headers["Content-Type"] = "application/json"
        out.append(Prepared(message_id, body, headers))
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.acked: list[str] = []
        self.last_done = 0.0

    def ok(self, req: Prepared, status: int, latency: float, done: float) -> None:
        self.statuses[str(status)] += 1
        if 200 <= status < 300:
            self.acked.append(req.message_id)
            self.latencies.append(latency)
        self.last_done = max(self.last_done, done)

    def error(self, exc: BaseException, done: float) -> None:
        self.statuses[type(exc).__name__] += 1
        self.last_done = max(self.last_done, done)

    def summary(self, started: float, cpu: float) -> dict[str, Any]:
        lat = sorted(self.latencies)
        elapsed = max(self.last_done - started, 1e-9)
        return {
            "acked": len(self.acked),
            "sent": sum(self.statuses.values()),
            "statuses": dict(self.statuses),
            "elapsed_s": elapsed,
            "acked_per_s": len(self.acked) / elapsed,
            "p50_ms": _ms(percentile(lat, 50)),
            "p90_ms": _ms(percentile(lat, 90)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1] if lat else None),
            "generator_cpu_pct": 100 * cpu / elapsed,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


async def send(session: aiohttp.ClientSession, url: str, req: Prepared) -> int:
    async with session.post(url + req.query, data=req.body, headers=req.headers) as resp:
        await resp.read()
        return resp.status


async def run_closed(
    session: aiohttp.ClientSession, url: str, reqs: list[Prepared], duration: float, concurrency: int
) -> tuple[Recorder, float, float]:
    rec = Recorder()
    next_index = 0
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(reqs) and time.perf_counter() < deadline:
            req = reqs[next_index]
            next_index += 1
            t = time.perf_counter()
            try:
                status = await send(session, url, req)
            except (aiohttp.ClientError, TimeoutError) as exc:
                rec.error(exc, time.perf_counter())
                continue
            done = time.perf_counter()
            rec.ok(req, status, done - t, done)

    cpu0 = cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rec, started, cpu_seconds() - cpu0


async def run_open(
    session: aiohttp.ClientSession, url: str, reqs: list[Prepared], rate: float, duration: float
) -> tuple[Recorder, float, float, float]:
    """Returns (recorder, start, generator cpu seconds, worst dispatch lateness in seconds)."""
    rec = Recorder()
    count = min(len(reqs), int(rate * duration))
    tasks: list[asyncio.Task[None]] = []
    worst_late = 0.0

    async def one(req: Prepared, scheduled: float) -> None:
        try:
            status = await send(session, url, req)
        except (aiohttp.ClientError, TimeoutError) as exc:
            rec.error(exc, time.perf_counter())
            return
        done = time.perf_counter()
        rec.ok(req, status, done - scheduled, done)

    cpu0 = cpu_seconds()
    started = time.perf_counter() + 0.01
    for i in range(count):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        worst_late = max(worst_late, time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(one(reqs[i], scheduled)))
    await asyncio.gather(*tasks)
    return rec, started, cpu_seconds() - cpu0, worst_late


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    secret = os.environ[args.secret_env].encode("utf-8")
    warm_count = args.warmup if args.mode == "closed" else min(args.warmup, max(20, int(args.rate)))  # <= ~1 s
    warm = prepare(f"{args.prefix}w", warm_count, args.users, secret)
    closed_pool = args.pool or int(args.duration * 30000)  # > any rate seen on this kind of machine
    pool_size = closed_pool if args.mode == "closed" else int(args.rate * args.duration) + 1
    reqs = prepare(args.prefix, pool_size, args.users, secret)
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    result: dict[str, Any] = {"mode": args.mode, "concurrency": args.concurrency, "users": args.users}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.mode == "closed":
            warm_rec, _, _ = await run_closed(session, args.url, warm, 3600, args.concurrency)
        else:  # paced like the measured phase, so the warm-up does not leave a backlog behind
            warm_rec, _, _, _ = await run_open(session, args.url, warm, args.rate, len(warm) / args.rate)
        result["warmup"] = {"acked": len(warm_rec.acked), "statuses": dict(warm_rec.statuses)}
        if args.mode == "closed":
            rec, started, cpu = await run_closed(session, args.url, reqs, args.duration, args.concurrency)
            result["pool_exhausted"] = sum(rec.statuses.values()) >= len(reqs)
        else:
            rec, started, cpu, late = await run_open(session, args.url, reqs, args.rate, args.duration)
            result["target_rate"] = args.rate
            result["worst_dispatch_lateness_ms"] = late * 1000
        result.update(rec.summary(started, cpu))
    result["_acked_ids"] = warm_rec.acked + rec.acked
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="Signed-webhook load generator (prints one JSON object).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--secret-env", required=True, help="environment variable holding the bot secret")
    parser.add_argument("--mode", choices=["closed", "open"], required=True)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of measured load")
    parser.add_argument("--rate", type=float, default=0.0, help="open mode: messages per second")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (and workers in closed mode)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument(
        "--pool", type=int, default=0, help="closed mode: pre-signed messages available (default 30000/s)"
    )
    parser.add_argument("--warmup", type=int, default=500, help="unmeasured requests sent first")
    parser.add_argument("--prefix", default="bench", help="message id prefix (must be unique per server)")
    parser.add_argument("--request-timeout", type=float, default=30.0)
    parser.add_argument("--acked-out", help="write acked message ids to this file")
    args = parser.parse_args()
    if args.mode == "open" and args.rate <= 0:
        parser.error("--rate is required in open mode")
    result = asyncio.run(main_async(args))
    acked = result.pop("_acked_ids")
    if args.acked_out:
        Path(args.acked_out).write_text("\n".join(acked) + "\n", encoding="utf-8")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
