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

This file is the plan (what runs, in which order, what is timed); the process/CPU/metrics plumbing
is in bench/support.py and the summary, warnings and goal verdicts are in bench/report.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for _path in (BENCH.parent, BENCH):  # run as a script: make the repo root and the sibling bench modules importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import aiohttp  # noqa: E402
from report import goals, render, summarise  # noqa: E402
from support import (  # noqa: E402
    BOT,
    ROOT,
    SECRET,
    SECRET_ENV,
    ServerProc,
    children_cpu,
    clean_env,
    count_missing,
    fmt,
    gateway_config,
    parse_metrics,
    pct,
    self_cpu,
    source_state,
    system_busy,
    turn_histogram_delta,
    wait_quiet,
)

from adapters.webhook.signing import signed_headers  # noqa: E402
from gateway.messages import ChatKind, InboundMessage  # noqa: E402
from gateway.turns import reply_key  # noqa: E402
from tests.fakes.fake_llm import DelayReply, FakeLLM  # noqa: E402
from tests.fakes.webhook_peer import CallbackReceiver, make_payload  # noqa: E402

PY = sys.executable
ROUTE = f"/webhooks/webhook/{BOT}"

_SCRIPT = Path(PY).parent / "switchboard"
SWITCHBOARD = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
)


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
    agent: bool = True  # False: turns are plain chat (no skill routing / tools), to see what the agent costs

    @staticmethod
    def full() -> Plan:
        return Plan(2, 5.0, 5.0, 500, 64, 500, 200, 1000, 10, ("ceiling", "full", "normal", "stalled"))

    @staticmethod
    def quick() -> Plan:
        return Plan(1, 2.0, 2.0, 200, 64, 500, 50, 1000, 10, ("ceiling", "full", "stalled"))


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
            gateway_config(config, d / "data", synchronous, llm.base_url, receiver.url, agent=self.plan.agent)
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
            gateway_config(config, d / "data", "FULL", self.llm.base_url, receiver.url, agent=self.plan.agent)
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
                        sent, acked, _inbound_id = await post_one(session, url, f"e2e-{i}", f"e2e-user-{i}")
                        key = reply_key(_as_inbound(f"e2e-{i}"), 0)
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


def _as_inbound(message_id: str) -> InboundMessage:
    """Just enough of the message the gateway journals to derive its reply's idempotency key."""
    return InboundMessage(
        platform="webhook",
        bot_id=BOT,
        platform_msg_id=message_id,
        chat_id="-",
        chat_kind=ChatKind.DIRECT,
        sender_id="-",
    )


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
    from memory import session_memory  # bench/memory.py

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
    parser.add_argument("--plain-chat", action="store_true", help="turns without the skill agent (agent.enabled off)")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    if args.plain_chat:
        plan = dataclasses.replace(plan, agent=False)
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
