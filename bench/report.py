"""Turns the ingest benchmark's raw per-phase results into the summary table, warnings and goal verdicts.

Separate from the measuring so that judging a run never depends on how it was run: these functions
only read the plain report dict (the same one --json writes), and the goal thresholds sit next to
the only code that checks them.
"""

from __future__ import annotations

import statistics
from typing import Any

from support import fmt

GOAL_RATIO = 0.6
GOAL_P99_MS = 50.0


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
