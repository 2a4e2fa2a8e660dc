"""WeCom ingest benchmark: ack throughput of the encrypted callback path against a bare-aiohttp ceiling.

    .venv/bin/python bench/wecom_ingest.py [--quick] [--json bench/results/wecom_ingest.json] [--keep]

Same method as bench/ingest.py (closed loop, 64 connections, every server and the load generator in
its own process, a fresh gateway process and database per row) on `POST /webhooks/wecom/{bot_id}`
with the self-built app's AES scheme. This one file plays three roles:

* (default)   the orchestrator: runs the rows below and prints the table.
* `ceiling`   a bare aiohttp server doing the verification a minimal correct handler must do:
              timestamp window, safe parse of the envelope, msg_signature + AES decrypt + CorpID check
              (wechatpy's `WeChatCrypto.decrypt_message`), then "success". No message parse, no journal.
* `loadgen`   pre-builds the encrypted callbacks (50 users, distinct MsgIds, exactly what
              tests/fakes/wechat_crypto.py says the platform sends), then drives bench/loadgen.py's closed loop.

Rows per round: ceiling; gateway FULL (instant fake LLM, replies go out via `message/send` to a
FakeWeChatAPI in this process; its and the adapter's 30/min per-member limit throttle replies, which
is realistic: ingest acks are what is measured); gateway FULL with the LLM stalled (no turn work
competes). After each gateway row the process is SIGKILLed and every acked MsgId is looked up in its
SQLite journal.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for _path in (BENCH.parent, BENCH):  # run as a script: make the repo root and the sibling bench modules importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from loadgen import Prepared, run_closed  # noqa: E402
from support import (  # noqa: E402
    BOT,
    ROOT,
    ServerProc,
    children_cpu,
    clean_env,
    count_missing,
    fmt,
    gateway_config,
    parse_metrics,
    self_cpu,
    source_state,
    system_busy,
    wait_quiet,
)

from tests.fakes.wechat_crypto import (  # noqa: E402
    WECOM_AES_KEY,
    WECOM_AGENT_ID,
    WECOM_CORPID,
    WECOM_TOKEN,
    WeChatCipher,
    build_xml,
    sha1_signature,
)

PY = sys.executable
ROUTE = f"/webhooks/wecom/{BOT}"
TEXT = "Hello, could you summarise what changed in the deployment pipeline since last week? Thanks!"
MAX_BODY, WINDOW = 64 * 1024, 3600.0  # the adapter's defaults (max_body_bytes, timestamp_window)
_SCRIPT = Path(PY).parent / "switchboard"
SWITCHBOARD = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
)


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    warmup: int
    concurrency: int
    users: int

    @staticmethod
    def full() -> Plan:
        return Plan(2, 5.0, 500, 64, 50)

    @staticmethod
    def quick() -> Plan:
        return Plan(1, 3.0, 200, 64, 50)


# --------------------------------------------------------------------------- role: load generator


def prepare_wecom(first_msg_id: int, count: int, users: int, user_prefix: str = "user") -> list[Prepared]:
    """Encrypted text callbacks as WeCom posts them; Prepared.message_id is the MsgId the journal keys on."""
    cipher, now = WeChatCipher(WECOM_AES_KEY), int(time.time())
    out: list[Prepared] = []
    for i in range(count):
        msg_id = first_msg_id + i
        inner = build_xml(
            {
                "ToUserName": WECOM_CORPID,
                "FromUserName": f"{user_prefix}-{i % users}",
                "CreateTime": now,
                "MsgType": "text",
                "Content": f"{TEXT} (#{i})",
                "MsgId": msg_id,
                "AgentID": WECOM_AGENT_ID,
            }
        )
        encrypt = cipher.encrypt(inner, WECOM_CORPID)
        nonce = f"{msg_id % 10**10:010d}"
        body = build_xml({"ToUserName": WECOM_CORPID, "AgentID": str(WECOM_AGENT_ID), "Encrypt": encrypt})
        sig = sha1_signature(WECOM_TOKEN, str(now), nonce, encrypt)
        query = f"?msg_signature={sig}&timestamp={now}&nonce={nonce}"
        out.append(Prepared(str(msg_id), body.encode(), {"Content-Type": "text/xml"}, query))
    return out


async def loadgen_main(args: argparse.Namespace) -> dict[str, Any]:
    base = args.first_msg_id
    warm = prepare_wecom(base, args.warmup, args.users)
    reqs = prepare_wecom(base + args.warmup, int(args.duration * 20000), args.users)  # > any rate seen here
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        warm_rec, _, _ = await run_closed(session, args.url, warm, 3600, args.concurrency)
        rec, started, cpu = await run_closed(session, args.url, reqs, args.duration, args.concurrency)
    result: dict[str, Any] = {"warmup": {"acked": len(warm_rec.acked), "statuses": dict(warm_rec.statuses)}}
    result["pool_exhausted"] = sum(rec.statuses.values()) >= len(reqs)
    result.update(rec.summary(started, cpu))
    result["_acked_ids"] = warm_rec.acked + rec.acked
    return result


# --------------------------------------------------------------------------- role: ceiling server


async def ceiling_main(port: int) -> None:
    from wechatpy.enterprise.crypto import WeChatCrypto

    from adapters.wxcommon.xml import CallbackRejected, parse_xml

    crypto = WeChatCrypto(os.environ["BENCH_WECOM_TOKEN"], os.environ["BENCH_WECOM_AES"], WECOM_CORPID)

    async def handle(request: web.Request) -> web.Response:
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.Response(status=413, text="body too large")
        q = request.query
        try:
            if abs(time.time() - int(q.get("timestamp", ""))) > WINDOW:
                return web.Response(status=403, text="stale")
            encrypt = parse_xml(body).get("Encrypt", "")
            crypto.decrypt_message({"Encrypt": encrypt}, q["msg_signature"], q["timestamp"], q["nonce"])
        except CallbackRejected as exc:
            return web.Response(status=exc.status, text=exc.reason)
        except Exception as exc:
            return web.Response(status=403, text=type(exc).__name__)
        return web.Response(text="success")

    app = web.Application()
    app.router.add_post("/webhooks/wecom/{bot_id}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"wecom bare server ready on port {runner.addresses[0][1]}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()  # until SIGTERM (aiohttp's default handling ends the process)


# --------------------------------------------------------------------------- orchestrator


def wecom_config(path: Path, data_dir: Path, llm_url: str, api_base: str) -> None:
    """bench/support.py's gateway config (FULL), with only the WeCom adapter and one app bot."""
    gateway_config(path, data_dir, "FULL", llm_url, "http://127.0.0.1:9/unused")
    config = json.loads(path.read_text(encoding="utf-8"))
    bot = {"kind": "app", "corp_id": WECOM_CORPID, "agent_id": WECOM_AGENT_ID, "secret_env": "BENCH_WECOM_SECRET"}
    bot |= {"token_env": "BENCH_WECOM_TOKEN", "encoding_aes_key_env": "BENCH_WECOM_AES"}
    config["adapters"] = {"wecom": {"enabled": True, "api_base": api_base, "bots": {BOT: bot}}}
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


async def measure(server: ServerProc, plan: Plan, first_msg_id: int, acked: Path | None) -> dict[str, Any]:
    """One load generator process against `server`, and where the CPU went meanwhile (% of one core)."""
    await wait_quiet(lambda m: print(m, file=sys.stderr, flush=True))
    argv = [PY, __file__, "loadgen", "--url", server.url + ROUTE, "--duration", str(plan.seconds)]
    argv += ["--concurrency", str(plan.concurrency), "--users", str(plan.users), "--warmup", str(plan.warmup)]
    argv += ["--first-msg-id", str(first_msg_id), *(["--acked-out", str(acked)] if acked else [])]
    sys0, srv0, own0, kids0, t0 = system_busy(), server.cpu_seconds(), self_cpu(), children_cpu(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*argv, stdout=-1, stderr=-1, env=clean_env(), cwd=ROOT)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=plan.seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}):\n{err.decode(errors='replace')[-3000:]}")
    wall = time.perf_counter() - t0
    srv, own, kids = server.cpu_seconds() - srv0, self_cpu() - own0, children_cpu() - kids0
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["server_cpu_pct_whole_run"] = 100 * srv / wall
    result["bench_process_cpu_pct"] = 100 * own / wall  # fake LLM + fake WeCom API threads
    result["other_processes_cpu_pct"] = 100 * max(0.0, system_busy() - sys0 - srv - own - kids) / wall
    return result


async def wait_ready(url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


async def gateway_row(plan: Plan, d: Path, llm: Any, stalled: bool, first_msg_id: int) -> dict[str, Any]:
    from tests.fakes.wechat_api import FakeWeChatAPI

    with FakeWeChatAPI() as api:
        wecom_config(d / "config.yaml", d / "data", llm.base_url, api.base_url)
        argv = [*SWITCHBOARD, "--config", str(d / "config.yaml"), "serve"]
        server = await asyncio.to_thread(ServerProc("gateway FULL", argv, d / "server.log").start)
        try:
            await wait_ready(server.url)
            if stalled:
                llm.enqueue("primed")  # only the priming turn gets an answer
            # One whole turn first, so lazy imports (litellm) are done before anything is timed.
            prime = prepare_wecom(first_msg_id - 1, 1, 1, "prime")[0]
            async with (
                aiohttp.ClientSession() as session,
                session.post(server.url + ROUTE + prime.query, data=prime.body) as resp,
            ):
                if resp.status != 200:
                    raise RuntimeError(f"priming callback answered {resp.status}: {await resp.text()}")
            await asyncio.to_thread(api.wait_delivered, 1, 60.0)
            sends0 = len(api.sends)
            result = await measure(server, plan, first_msg_id, d / "acked.txt")
            result["wecom_sends_during_run"] = len(api.sends) - sends0
            result["server_rss_mb"] = server.rss_mb()
            async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as resp:
                metrics = parse_metrics(await resp.text())
            result["metrics"] = {k: v for k, v in metrics.items() if not k.startswith("_")}
        finally:
            await asyncio.to_thread(server.stop, kill=True)  # a crash right after the last ack
    acked, missing = count_missing(d / "data" / "switchboard.sqlite3", d / "acked.txt")
    result["durability"] = {"acked_incl_warmup": acked, "missing_after_sigkill": missing}
    return result


async def run(plan: Plan, workdir: Path) -> dict[str, Any]:
    from tests.fakes.fake_llm import DelayReply, FakeLLM

    started = time.monotonic()
    report: dict[str, Any] = {"plan": asdict(plan), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    report["source"] = source_state()
    never, rounds = DelayReply(3600.0), []
    with FakeLLM(max_recorded=0) as llm, FakeLLM(max_recorded=0, default=lambda body: never) as stalled_llm:
        for n in range(plan.rounds):
            rnd: dict[str, Any] = {}
            for i, kind in enumerate(("ceiling", "full", "stalled")):
                d = workdir / f"{n}-{kind}"
                d.mkdir(parents=True)
                first = 10**15 * (1 + n) + 10**12 * (1 + i)  # MsgIds unique across the run
                print(f"round {n + 1}/{plan.rounds}: {kind}...", file=sys.stderr, flush=True)
                if kind == "ceiling":
                    srv = ServerProc("wecom bare server", [PY, __file__, "ceiling"], d / "server.log")
                    await asyncio.to_thread(srv.start)
                    try:
                        rnd[kind] = await measure(srv, plan, first, None)
                    finally:
                        await asyncio.to_thread(srv.stop)
                else:
                    rnd[kind] = await gateway_row(
                        plan, d, stalled_llm if kind == "stalled" else llm, kind == "stalled", first
                    )
                print(f"    {rnd[kind]['acked_per_s']:,.0f} acked/s", file=sys.stderr, flush=True)
            for kind in ("full", "stalled"):
                rnd[kind]["ratio_to_ceiling"] = rnd[kind]["acked_per_s"] / max(rnd["ceiling"]["acked_per_s"], 1e-9)
            rounds.append(rnd)
    report.update(rounds=rounds, loadavg_end=os.getloadavg(), wall_seconds=time.monotonic() - started)
    return report


def render(report: dict[str, Any]) -> str:
    plan = report["plan"]
    la0, la1 = (", ".join(f"{x:.2f}" for x in report[k]) for k in ("loadavg_start", "loadavg_end"))
    lines = [
        f"WeCom callback ingest (AES on), commit {report['source'][0]}: {report['cpus']} CPUs, load {la0} -> {la1}; "
        f"closed loop {plan['seconds']:g} s, {plan['concurrency']} conns, {plan['users']} users",
        f"{'row':<26}{'acked/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'ratio':>7}{'srv cpu%':>9}{'gen cpu%':>9}"
        f"{'other%':>7}  acks lost  non-2xx",
    ]
    names = {"ceiling": "ceiling (bare aiohttp)", "full": "gateway FULL", "stalled": "gateway FULL, LLM stalled"}
    for n, rnd in enumerate(report["rounds"]):
        for kind, r in rnd.items():
            dur = r.get("durability")
            lost = f"{dur['missing_after_sigkill']}/{dur['acked_incl_warmup']}" if dur else "-"
            bad = {k: v for k, v in r["statuses"].items() if not k.startswith("2")} or "-"
            ratio = fmt(r.get("ratio_to_ceiling"), 2)
            lines.append(
                f"{names[kind] + (f' r{n + 1}' if len(report['rounds']) > 1 else ''):<26}{r['acked_per_s']:>9,.0f}"
                f"{fmt(r['p50_ms']):>8}{fmt(r['p99_ms']):>8}{ratio:>7}{r['server_cpu_pct_whole_run']:>9.0f}"
                f"{r['generator_cpu_pct']:>9.0f}{r['other_processes_cpu_pct']:>7.0f}  {lost:<10} {bad}"
                + ("  POOL EXHAUSTED" if r.get("pool_exhausted") else "")
            )
    full = report["rounds"][-1]["full"]
    m = full["metrics"]
    lines.append(
        f"gateway FULL (last round): {m['turns']:,} turns done, {full['wecom_sends_during_run']:,} message/send "
        f"calls reached the fake WeCom API during the load (replies paced at 30/min per member), "
        f"journal backlog left {m['queue_depth']:,}, mean write batch {fmt(m['mean_write_batch'])}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Switchboard WeCom ingest benchmark (see bench/README.md).")
    parser.add_argument("role", nargs="?", choices=["bench", "ceiling", "loadgen"], default="bench")
    parser.add_argument("--quick", action="store_true", help="one short round, ~40 s")
    parser.add_argument("--json", type=Path, help="also write all figures as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    for name, kind in (("--url", str), ("--duration", float), ("--concurrency", int), ("--users", int)):
        parser.add_argument(name, type=kind, help=argparse.SUPPRESS)  # loadgen role
    for name, kind in (("--warmup", int), ("--first-msg-id", int), ("--acked-out", str), ("--port", int)):
        parser.add_argument(name, type=kind, default=0 if kind is int else None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "ceiling":
        asyncio.run(ceiling_main(args.port))
        return 0
    if args.role == "loadgen":
        result = asyncio.run(loadgen_main(args))
        acked = result.pop("_acked_ids")
        if args.acked_out:
            Path(args.acked_out).write_text("\n".join(acked) + "\n", encoding="utf-8")
        print(json.dumps(result), flush=True)
        return 0
    from tests.fakes.wechat_api import WECOM_SECRET

    # The bot's secrets, inherited by every server process through support.clean_env().
    os.environ.update(BENCH_WECOM_SECRET=WECOM_SECRET, BENCH_WECOM_TOKEN=WECOM_TOKEN, BENCH_WECOM_AES=WECOM_AES_KEY)
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-wecom-bench-"))
    try:
        report = asyncio.run(run(Plan.quick() if args.quick else Plan.full(), workdir))
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))
    print(f"\n(total wall time {report['wall_seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
