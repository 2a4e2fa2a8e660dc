"""Where an ack's CPU goes: server CPU per acked message, layer by layer, at one fixed rate.

    .venv/bin/python bench/ingest_cost.py [--rate 2000] [--seconds 5] [--rounds 3]

bench/ingest.py reports throughput against the bare-aiohttp ceiling, which on a small machine
moves by tens of percent from one run to the next (the load generator shares the CPUs and is the
ceiling's own bottleneck). CPU time per acked message at a rate every server sustains is far
steadier, and splitting it by layer shows what each one costs:

* bare      bench/bare_server.py: aiohttp + the signature check.
* adapter   bench/adapter_server.py --storage none: the real webhook adapter, nothing stored.
* journal   bench/adapter_server.py --storage journal: the adapter + the durable SQLite journal.
* gateway   `switchboard serve` with the LLM stalled (no turn ever finishes), so only ingest runs.

Each layer runs in its own fresh process, in the same order every round; figures are medians over
rounds. "main" is the event-loop thread, which must fit in one core; "other" is every other
thread (the SQLite writer, readers) and child process (the LLM worker). Per-message cost falls as
the rate rises (more requests per wakeup, bigger commits), so compare layers at one rate only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for _path in (BENCH.parent, BENCH):  # run as a script: make the repo root and the sibling bench modules importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from support import BOT, ROOT, SECRET_ENV, ServerProc, clean_env, gateway_config, wait_quiet  # noqa: E402

from tests.fakes.fake_llm import DelayReply, FakeLLM  # noqa: E402

PY = sys.executable
ROUTE = f"/webhooks/webhook/{BOT}"
LAYERS = ("bare", "adapter", "journal", "gateway")
_SCRIPT = Path(PY).parent / "switchboard"
SWITCHBOARD = [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-m", "gateway.cli"]


def _ticks(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_split(pid: int) -> tuple[float, float]:
    """(event-loop thread, everything else incl. child processes) CPU seconds of server `pid`."""
    main = _ticks(Path(f"/proc/{pid}/task/{pid}/stat"))
    total = _ticks(Path(f"/proc/{pid}/stat"))
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += _ticks(Path(f"/proc/{child}/stat"))
    return main, total - main


def _argv(layer: str, data: Path) -> list[str]:
    if layer == "bare":
        return [PY, str(BENCH / "bare_server.py"), "--secret-env", SECRET_ENV]
    if layer in ("adapter", "journal"):
        storage = "none" if layer == "adapter" else "journal"
        script = str(BENCH / "adapter_server.py")
        return [PY, script, "--secret-env", SECRET_ENV, "--storage", storage, "--data", str(data)]
    return [*SWITCHBOARD, "--config", str(data / "config.yaml"), "serve"]


def _load(url: str, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    argv = [PY, str(BENCH / "loadgen.py"), "--url", url + ROUTE, "--secret-env", SECRET_ENV, "--mode", "open"]
    argv += ["--rate", str(rate), "--duration", str(seconds), "--warmup", "0", "--prefix", prefix]
    out = subprocess.run(argv, capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=seconds + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def measure(layer: str, work: Path, llm_url: str, rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """One fresh server of `layer`: warm it, then time `seconds` of load at `rate`."""
    data = work / f"{tag}-{layer}"
    data.mkdir(parents=True)
    if layer == "gateway":  # replies go nowhere: no turn ever finishes with the stalled LLM
        gateway_config(data / "config.yaml", data / "data", "FULL", llm_url, "http://127.0.0.1:9/")
    server = ServerProc(layer, _argv(layer, data), data / "server.log")
    await asyncio.to_thread(server.start)
    try:
        assert server.proc is not None
        await asyncio.to_thread(_load, server.url, rate, 1.0, f"{tag}-w")  # connections, caches, lazy imports
        await wait_quiet(lambda msg: print(msg, file=sys.stderr))
        main0, other0 = cpu_split(server.proc.pid)
        result = await asyncio.to_thread(_load, server.url, rate, seconds, f"{tag}-m")
        main1, other1 = cpu_split(server.proc.pid)
    finally:
        await asyncio.to_thread(server.stop)
    acked = result["acked"]
    return {
        "acked": acked,
        "acked_per_s": result["acked_per_s"],
        "p99_ms": result["p99_ms"],
        "main_us": 1e6 * (main1 - main0) / acked,
        "other_us": 1e6 * (other1 - other0) / acked,
    }


async def run(rate: float, seconds: float, rounds: int, work: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {layer: [] for layer in LAYERS}
    never = DelayReply(3600.0)
    with FakeLLM(max_recorded=0, default=lambda body: never) as stalled:
        for n in range(rounds):
            for layer in LAYERS:
                row = await measure(layer, work, stalled.base_url, rate, seconds, f"r{n}")
                found[layer].append(row)
                print(
                    f"round {n + 1}/{rounds} {layer:8s} main {row['main_us']:6.1f} us  other {row['other_us']:6.1f} us"
                    f"  ({row['acked']} acked, p99 {row['p99_ms']:.1f} ms)",
                    file=sys.stderr,
                    flush=True,
                )
    return found


def render(found: dict[str, list[dict[str, Any]]], rate: float) -> str:
    def med(layer: str, key: str) -> float:
        return float(statistics.median(r[key] for r in found[layer]))

    bare_main = med("bare", "main_us")
    bare = bare_main + med("bare", "other_us")
    lines = [
        f"server CPU per acked message at {rate:,.0f} msgs/s (median of {len(found['bare'])} rounds)",
        f"{'layer':10s} {'main us':>8s} {'other us':>9s} {'total us':>9s} {'x bare':>7s} {'main x bare':>12s}",
    ]
    for layer in LAYERS:
        main, other = med(layer, "main_us"), med(layer, "other_us")
        total = main + other
        lines.append(f"{layer:10s} {main:8.1f} {other:9.1f} {total:9.1f} {total / bare:7.2f} {main / bare_main:12.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-layer CPU cost of an acked webhook message.")
    parser.add_argument("--rate", type=float, default=2000.0, help="messages per second, open loop")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per layer and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every row as JSON to this file")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="switchboard-cost-") as tmp:
        found = asyncio.run(run(args.rate, args.seconds, args.rounds, Path(tmp)))
    print(render(found, args.rate))
    print(f"\n(total wall time {time.monotonic() - started:.0f} s, {os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps(found, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
