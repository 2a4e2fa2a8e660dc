"""Feishu adapter benchmark: long-connection ack latency under load, and streaming-card updates per second.

    .venv/bin/python bench/feishu.py [--quick] [--json bench/results/feishu.json] [--keep]

Both parts run the real gateway as a `switchboard serve` subprocess (a fresh process and database per
row) with only the Feishu adapter enabled: one long-connection bot whose `domain` is a FakeFeishuAPI and
whose `long_connection_domain` is a FakeFeishuWs. The fakes and the fake LLM run in this process, each
on its own thread and event loop (tests/fakes/), so the gateway's one event loop is measured from outside.

Part 1, ack latency on the long connection: N text events (50 users, one p2p chat each, every message
registered with the fake API so replies land) are pushed over the WebSocket at several offered rates,
open loop (a fixed schedule in 10 ms batches; "max" = back-to-back batches of 20 as fast as the fake's
loop writes them). Figures come from the fake's own ack records: an ack's latency is the time from the
fake writing that delivery to the fake reading its ack frame (both in the fake's loop, so at "max" they
include the fake's own backlog). The fake redelivers any event not acked 200 within 3 s, as Feishu does.
Each rate runs with an echo LLM (turns and replies compete with ingest) and a stalled LLM (no turn
work). After the last ack the gateway is SIGKILLed and every acked event's message_id is looked up in `inbound`.

Part 2, streaming cards (bench/feishu_cards.py): a slow streaming LLM (SlowStreamLLM: a FakeLLM whose paced
SSE stream also records when its first and last delta were written) writes a long answer in small chunks over a few
seconds; the fake API's CardKit log gives updates per second per card, rejected operations, finalize
count, and the time from the LLM's last token to the card being finalized.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
for _path in (BENCH.parent, BENCH):  # run as a script: make the repo root and the sibling bench modules importable
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")

from support import (  # noqa: E402
    BOT,
    ServerProc,
    count_missing,
    fmt,
    gateway_config,
    parse_metrics,
    pct,
    self_cpu,
    source_state,
    system_busy,
    wait_quiet,
)

from tests.fakes.fake_llm import DelayReply, FakeLLM  # noqa: E402
from tests.fakes.feishu_api import APP_ID, APP_SECRET, FakeFeishuAPI  # noqa: E402
from tests.fakes.feishu_events import Person, text_event  # noqa: E402
from tests.fakes.feishu_ws import FakeFeishuWs  # noqa: E402

PY = sys.executable
_SCRIPT = Path(PY).parent / "switchboard"
SWITCHBOARD = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
)
SECRET_ENV = "BENCH_FEISHU_APP_SECRET"
USERS = 50
TEXT = "Hello, could you summarise what changed in the deployment pipeline since last week? Thanks!"
ACK_BUDGET = 3.0  # Feishu redelivers an event not acked 200 within this
FEISHU_CARD_LIMIT = 10  # CardKit operations per second per card entity
SEQUENCE_ERROR, RATE_LIMITED = 300317, 99991400


@dataclass(frozen=True)
class Plan:
    events: int
    # (LLM, offered events/s) per ack row; LLM "echo": turns + replies compete with ingest, "stalled": no
    # turn work; rate None = back-to-back batches as fast as the fake writes them
    rows: tuple[tuple[str, float | None], ...]
    ack_wait: float  # seconds to wait for the last acks (and redeliveries) after the last push
    quiet_within: float  # at most this long waiting for an idle machine before each timed phase
    answer_chars: int
    chunk_chars: int
    stream_seconds: float
    card_streams: tuple[int, ...]  # concurrent streaming answers per card row

    @staticmethod
    def full() -> Plan:
        rows = tuple((llm, rate) for llm in ("echo", "stalled") for rate in (200.0, 1000.0, None))
        return Plan(5000, rows, 25.0, 6.0, 2000, 4, 5.0, (1, 4))

    @staticmethod
    def quick() -> Plan:
        rows = (("echo", 200.0), ("echo", 1000.0), ("echo", None), ("stalled", None))
        return Plan(1000, rows, 12.0, 2.0, 2000, 4, 5.0, (1,))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- gateway process


def feishu_config(path: Path, data_dir: Path, llm_url: str, api: FakeFeishuAPI, ws: FakeFeishuWs) -> None:
    """bench/support.py's gateway config (synchronous FULL) with only the Feishu adapter and one bot."""
    gateway_config(path, data_dir, "FULL", llm_url, "http://127.0.0.1:9/unused")
    config = json.loads(path.read_text(encoding="utf-8"))
    section = {"enabled": True, "domain": api.base_url, "long_connection_domain": ws.domain}
    section["bots"] = {BOT: {"app_id": APP_ID, "app_secret_env": SECRET_ENV}}  # defaults: long connection
    config["adapters"] = {"feishu": section}
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, urllib.error.URLError):
        return 0, ""


def wait_ready(url: str, within: float = 60.0) -> None:
    """/readyz is 200 once the long connection is up and the bot knows its open_id."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if http_get(url + "/readyz")[0] == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready: {http_get(url + '/readyz')}")


def start_gateway(d: Path, llm_url: str, api: FakeFeishuAPI, ws: FakeFeishuWs) -> ServerProc:
    feishu_config(d / "config.yaml", d / "data", llm_url, api, ws)
    argv = [*SWITCHBOARD, "--config", str(d / "config.yaml"), "serve"]
    server = ServerProc("gateway FULL", argv, d / "server.log").start()
    try:
        wait_ready(server.url)
    except Exception:
        server.stop(kill=True)
        raise
    return server


def prime(api: FakeFeishuAPI, ws: FakeFeishuWs) -> None:
    """One whole turn first, so the connection pools and lazy imports are warm before anything is timed."""
    envelope = text_event("prime", sender=Person("ou_bench_prime"), chat_id="oc_bench_prime")
    api.add_event(envelope)
    ws.push(APP_ID, envelope)
    api.wait_messages(1, timeout=60)


def quiet(plan: Plan) -> None:
    asyncio.run(wait_quiet(log, within=plan.quiet_within))


# --------------------------------------------------------------------------- part 1: ack latency


def build_events(api: FakeFeishuAPI, count: int, tag: str) -> tuple[list[bytes], list[str], dict[str, str]]:
    """Payload bytes, event_ids and each event's message_id (the journal's dedup key); every message is
    registered with the fake API (so it can be replied to)."""
    payloads, ids, message_of = [], [], {}
    for i in range(count):
        user = i % USERS
        envelope = text_event(
            f"{TEXT} ({tag} #{i})", sender=Person(f"ou_bench_{user:03d}"), chat_id=f"oc_bench_p2p_{user:03d}"
        )
        api.add_event(envelope)
        payloads.append(json.dumps(envelope, ensure_ascii=False).encode())
        ids.append(envelope["header"]["event_id"])
        message_of[ids[-1]] = envelope["event"]["message"]["message_id"]
    return payloads, ids, message_of


def push_paced(ws: FakeFeishuWs, payloads: list[bytes], rate: float | None) -> tuple[float, float]:
    """Open loop: event i is due at i / rate; whatever is due goes out in one batch every ~10 ms."""
    sent, n, t0 = 0, len(payloads), time.monotonic()
    while sent < n:
        if rate is None:
            upto = min(n, sent + 20)
        else:
            upto = min(n, int((time.monotonic() - t0) * rate) + 1)
            if upto <= sent:
                time.sleep(max(0.0, min(0.01, t0 + sent / rate - time.monotonic())))
                continue
        ws.push_many(APP_ID, payloads[sent:upto])
        sent = upto
        if rate is not None:
            time.sleep(0.01)
    return t0, time.monotonic()


def wait_acked(ws: FakeFeishuWs, ids: list[str], within: float) -> None:
    deadline, want = time.monotonic() + within, set(ids)
    while time.monotonic() < deadline:
        if want <= {a.event_id for a in ws.acks(app_id=APP_ID) if a.code == 200}:
            return
        time.sleep(0.1)


def ack_figures(ws: FakeFeishuWs, ids: list[str], t_push0: float, t_push1: float) -> dict[str, Any]:
    wanted = set(ids)
    acks = [a for a in ws.acks(app_id=APP_ID) if a.event_id in wanted]
    ok = [a for a in acks if a.code == 200]
    ok_messages = {a.message_id for a in ok}
    ack_times = [f.at for f in ws.frames(APP_ID, 1) if f.headers.get("message_id") in ok_messages]
    acked = {a.event_id for a in ok}
    lat = [1000 * a.latency for a in acks]
    last_ack = max(ack_times) if ack_times else t_push0
    first_ack: dict[str, Any] = {}
    for a in acks:  # in arrival order: an event's first ack answers its first delivery
        first_ack.setdefault(a.event_id, a)
    first_pass = {a.message_id for a in first_ack.values() if a.code == 200}
    first_times = [f.at for f in ws.frames(APP_ID, 1) if f.headers.get("message_id") in first_pass]
    redelivered = sum(1 for e in ids if ws.deliveries(e) > 1)
    return {
        "events": len(ids),
        "offered_per_s": len(ids) / max(t_push1 - t_push0, 1e-9),
        "acked": len(acked),
        "not_acked": len(wanted - acked),
        "ack_codes": {str(k): v for k, v in sorted(Counter(a.code for a in acks).items())},
        "acks_total": len(acks),
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat) if lat else None,
        # every 200 ack, redeliveries included: push start -> last 200 ack
        "acked_per_s": len(acked) / max(last_ack - t_push0, 1e-9),
        # first deliveries acked 200: push start -> last of those acks
        "first_pass_acked": len(first_pass),
        "first_pass_acked_per_s": len(first_pass) / max(max(first_times, default=t_push0) - t_push0, 1e-9),
        "redelivered_events": redelivered,
        "acks_over_3s": sum(1 for a in acks if a.latency > ACK_BUDGET),
        "acks_500": sum(1 for a in acks if a.code == 500),
        "fake_protocol_errors": len(ws.errors),
        "_acked_ids": sorted(acked),
    }


def ack_row(plan: Plan, d: Path, llm: FakeLLM, kind: str, rate: float | None) -> dict[str, Any]:
    with FakeFeishuAPI() as api, FakeFeishuWs({APP_ID: APP_SECRET}) as ws:
        server = start_gateway(d, llm.base_url, api, ws)
        try:
            if kind == "stalled":
                llm.enqueue("primed")  # only the priming turn gets an answer
            prime(api, ws)
            payloads, ids, message_of = build_events(api, plan.events, d.name)
            replies0 = len(api.visible_messages())
            quiet(plan)
            sys0, srv0, own0 = system_busy(), server.cpu_seconds(), self_cpu()
            t_push0, t_push1 = push_paced(ws, payloads, rate)
            wait_acked(ws, ids, plan.ack_wait)
            wall = time.monotonic() - t_push0
            srv, own = server.cpu_seconds() - srv0, self_cpu() - own0
            result = ack_figures(ws, ids, t_push0, t_push1)
            result["target_per_s"] = rate
            result["server_cpu_pct"] = 100 * srv / wall
            result["bench_process_cpu_pct"] = 100 * own / wall  # the fakes (WS, API, LLM) + this orchestrator
            result["other_processes_cpu_pct"] = 100 * max(0.0, system_busy() - sys0 - srv - own) / wall
            result["replies_visible_at_end"] = len(api.visible_messages()) - replies0
            result["server_rss_mb"] = server.rss_mb()
            status, text = http_get(server.url + "/metrics")
            metrics = parse_metrics(text) if status == 200 else {}
            result["metrics"] = {k: v for k, v in metrics.items() if not k.startswith("_")}
        finally:
            server.stop(kill=True)  # a crash right after the last ack
    acked_ids = [message_of[e] for e in result.pop("_acked_ids")]  # the journal keys messages by message_id
    (d / "acked.txt").write_text("\n".join(acked_ids) + "\n", encoding="utf-8")
    acked, missing = count_missing(d / "data" / "switchboard.sqlite3", d / "acked.txt")
    result["durability"] = {"acked": acked, "missing_after_sigkill": missing}
    return result


# --------------------------------------------------------------------------- orchestration + report
# (part 2, streaming cards, is in bench/feishu_cards.py)


def run(plan: Plan, workdir: Path) -> dict[str, Any]:
    from feishu_cards import card_row  # part 2 lives there (it imports this module's gateway helpers)

    started = time.monotonic()
    report: dict[str, Any] = {"plan": asdict(plan), "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    report["source"] = source_state()
    never = DelayReply(3600.0)
    acks: list[dict[str, Any]] = []
    with FakeLLM(max_recorded=0) as echo, FakeLLM(max_recorded=0, default=lambda body: never) as stalled:
        for kind, rate in plan.rows:
            name = f"ack-{kind}-{'max' if rate is None else int(rate)}"
            d = workdir / name
            d.mkdir(parents=True)
            log(f"{name}: {plan.events} events...")
            t0 = time.monotonic()
            row = ack_row(plan, d, echo if kind == "echo" else stalled, kind, rate)
            row["llm"], row["row_wall_s"] = kind, time.monotonic() - t0
            acks.append(row)
            log(f"    {row['acked']}/{row['events']} acked, p99 {fmt(row['p99_ms'])} ms ({row['row_wall_s']:.0f} s)")
    cards = []
    for streams in plan.card_streams:
        d = workdir / f"cards-{streams}"
        d.mkdir(parents=True)
        log(f"cards: {streams} streaming answer(s) of {plan.answer_chars} chars over ~{plan.stream_seconds:g} s...")
        cards.append(card_row(plan, d, streams))
    report.update(acks=acks, cards=cards, loadavg_end=os.getloadavg(), wall_seconds=time.monotonic() - started)
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """Failures, and overload notes: redeliveries in the "max" rows, where the offered rate is unbounded and
    the adapter refuses (500) whatever exceeds its in-flight limit by design, are reported but do not fail."""
    problems: list[str] = []
    overload: list[str] = []
    for r in report["acks"]:
        where = f"{r['llm']} @ {'max' if r['target_per_s'] is None else int(r['target_per_s'])}/s"
        if r["not_acked"]:
            problems.append(f"{where}: {r['not_acked']} events never acked 200")
        if r["redelivered_events"] or r["acks_over_3s"] or r["acks_500"]:
            note = (
                f"{where}: {r['redelivered_events']} redelivered ({r['acks_500']} acked 500, {r['acks_over_3s']} > 3 s)"
            )
            (overload if r["target_per_s"] is None else problems).append(note)
        if r["durability"]["missing_after_sigkill"]:
            problems.append(f"{where}: {r['durability']['missing_after_sigkill']} acked events lost after SIGKILL")
        if r["fake_protocol_errors"]:
            problems.append(f"{where}: {r['fake_protocol_errors']} protocol errors at the fake")
    for row in report["cards"]:
        if row["cards_created"] != row["streams"] or row["bot_messages"] != row["streams"]:
            problems.append(f"{row['streams']} stream(s): {row['cards_created']} cards, {row['bot_messages']} messages")
        for c in row["cards"]:
            if c["max_ops_in_1s"] > FEISHU_CARD_LIMIT or c["rejected_ops"]:
                problems.append(
                    f"card {c['card_id'][-4:]}: {c['max_ops_in_1s']} ops in 1 s, {c['rejected_ops']} rejected"
                )
            if c["finalize_count"] != 1 or not c["final_text_equals_answer"]:
                problems.append(
                    f"card {c['card_id'][-4:]}: finalized {c['finalize_count']}x, "
                    f"text ok {c['final_text_equals_answer']}"
                )
    return {"ok": not problems, "problems": problems, "overload": overload}


def render(report: dict[str, Any]) -> str:
    plan = report["plan"]
    la0, la1 = (", ".join(f"{x:.2f}" for x in report[k]) for k in ("loadavg_start", "loadavg_end"))
    lines = [
        f"Feishu adapter, commit {report['source'][0]}: {report['cpus']} CPUs, load {la0} -> {la1}; "
        f"gateway = `switchboard serve` subprocess (storage FULL), fakes + fake LLM in the bench process",
        "",
        f"1) Long-connection ack latency: {plan['events']:,} events per row, {USERS} users, fresh gateway per row;"
        " latency = fake writes the event -> fake reads the ack",
        f"{'LLM':<8}{'target/s':>9}{'sent/s':>8}{'acked':>12}  {'ack codes':<17}{'p50 ms':>7}{'p95 ms':>8}"
        f"{'p99 ms':>8}{'max ms':>8}{'1st-pass/s':>11}{'all/s':>7}{'redeliv':>8}{'srv%':>6}{'bench%':>7}{'other%':>7}"
        "  lost/acked  replies",
    ]
    for r in report["acks"]:
        target = "max" if r["target_per_s"] is None else f"{r['target_per_s']:,.0f}"
        codes = ",".join(f"{k}:{v}" for k, v in r["ack_codes"].items())
        dur = r["durability"]
        lines.append(
            f"{r['llm']:<8}{target:>9}{r['offered_per_s']:>8,.0f}{r['acked']:>6,}/{r['events']:<5,}  {codes:<17}"
            f"{fmt(r['p50_ms']):>7}{fmt(r['p95_ms']):>8}{fmt(r['p99_ms']):>8}{fmt(r['max_ms']):>8}"
            f"{r['first_pass_acked_per_s']:>11,.0f}{r['acked_per_s']:>7,.0f}{r['redelivered_events']:>8}"
            f"{r['server_cpu_pct']:>6.0f}"
            f"{r['bench_process_cpu_pct']:>7.0f}{r['other_processes_cpu_pct']:>7.0f}"
            f"  {dur['missing_after_sigkill']}/{dur['acked']:<9,} {r['replies_visible_at_end']:,}"
        )
    lines += [
        "",
        f"2) Streaming cards: {plan['answer_chars']:,}-char answer in {plan['chunk_chars']}-char deltas over "
        f"~{plan['stream_seconds']:g} s (config: card_updates_per_second 8, stream_after 1 s; Feishu limit 10/s)",
        f"{'streams':>7}{'card':>6}{'updates':>8}{'mean/s':>8}{'max 1s':>7}{'ops 1s':>7}{'seq err':>8}{'rejected':>9}"
        f"{'finalized':>10}{'1st tok->1st upd s':>19}{'last tok->final s':>18}  text==answer  srv%",
    ]
    for row in report["cards"]:
        for c in row["cards"]:
            lines.append(
                f"{row['streams']:>7}{c['card_id'][-4:]:>6}{c['streaming_updates']:>8}"
                f"{fmt(c['updates_per_s_mean'], 2):>8}"
                f"{c['max_content_updates_in_1s']:>7}{c['max_ops_in_1s']:>7}{c['sequence_errors']:>8}{c['rejected_ops']:>9}"
                f"{c['finalize_count']:>10}{fmt(c['first_token_to_first_update_s'], 2):>19}"
                f"{fmt(c['last_token_to_finalized_s'], 3):>18}  {c['final_text_equals_answer']!s:<12}  "
                f"{row['server_cpu_pct']:.0f}"
            )
    v = report["verdict"]
    lines.append("")
    lines.append(
        "VERDICT: "
        + ("PASS: " if v["ok"] else "FAIL: ")
        + _summary(report)
        + "".join(f"; FAILED {p}" for p in v["problems"])
        + "".join(f"; OVERLOAD {o}" for o in v["overload"])
    )
    return "\n".join(lines)


def _summary(report: dict[str, Any]) -> str:
    acks, cards = report["acks"], [c for row in report["cards"] for c in row["cards"]]
    worst_p99 = max((r["p99_ms"] or 0.0) for r in acks) if acks else 0.0
    best = max((r["first_pass_acked_per_s"] for r in acks), default=0.0)
    redeliv = sum(r["redelivered_events"] for r in acks)
    lost = sum(r["durability"]["missing_after_sigkill"] for r in acks)
    top = max((c["max_ops_in_1s"] for c in cards), default=0)
    return (
        f"acks worst p99 {worst_p99:,.1f} ms, best {best:,.0f} acked/s (1st pass), {redeliv} redelivered, "
        f"{lost} lost after SIGKILL; cards max {top} ops/s per card (limit {FEISHU_CARD_LIMIT}), "
        f"{sum(c['sequence_errors'] for c in cards)} sequence errors, "
        f"finalized once: {all(c['finalize_count'] == 1 for c in cards)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Switchboard Feishu adapter benchmark (see bench/README.md).")
    parser.add_argument("--quick", action="store_true", help="1,000 events per ack row, one card row, < ~60 s")
    parser.add_argument("--json", type=Path, help="also write all figures as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args(argv)
    os.environ[SECRET_ENV] = APP_SECRET  # inherited by the gateway through support.clean_env()
    workdir = Path(tempfile.mkdtemp(prefix="switchboard-feishu-bench-"))
    try:
        report = run(Plan.quick() if args.quick else Plan.full(), workdir)
    finally:
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    print(render(report))
    print(f"\n(total wall time {report['wall_seconds']:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0 if report["verdict"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
