"""Skill routing quality and latency on MetaTool, following /work/shared/bench/metatool/README.md exactly.

    .venv/bin/python bench/route.py                 # full: all 10,129 test queries, K=5/20, 199/10k/100k skills
    .venv/bin/python bench/route.py --quick         # 1,500 test queries, K=5, 199/10k skills
    .venv/bin/python bench/route.py --tune          # grid-search fusion weights on the TRAIN split only
    .venv/bin/python bench/route.py --json bench/results/route.json

Split: sha1 of the stripped query, even = train, odd = test. Cold start indexes name + description only. Learned:
for each tool its first K train queries (sorted by that hash) go through `SkillRouter.learn`, the same call the
running system makes after a successful execution. Synthetic skills for the latency rows: a real description with
~30% of its words dropped plus 3-6 noise words drawn from the vocabulary of all descriptions, named after a real
tool plus a vocabulary word and a serial number (the 199 real skills stay in the library).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from agent_core.router import FusionWeights, SkillRouter, WordLlamaEmbedder  # noqa: E402
from agent_core.router.fusion import fuse  # noqa: E402
from agent_core.skills.model import SkillCard  # noqa: E402

DATA = Path("/work/shared/bench/metatool")


def qhash(query: str) -> int:
    return int(hashlib.sha1(query.strip().encode()).hexdigest(), 16)


def load() -> tuple[list[SkillCard], list[tuple[str, str]], list[tuple[str, str]]]:
    tools = json.loads((DATA / "tools.json").read_text(encoding="utf-8"))
    cards = [SkillCard(name, desc) for name, desc in tools.items()]
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    with (DATA / "queries.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            (train if qhash(row["Query"]) % 2 == 0 else test).append((row["Query"], row["Tool"]))
    return cards, train, test


def examples_for(train: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    by_tool: dict[str, list[str]] = {}
    for query, tool in train:
        by_tool.setdefault(tool, []).append(query)
    return [(tool, q) for tool, qs in by_tool.items() for q in sorted(qs, key=qhash)[:k]]


def recall(router: SkillRouter, queries: list[tuple[str, str]]) -> dict[str, float]:
    r1 = r5 = 0
    times = []
    for query, tool in queries:
        t0 = time.perf_counter()
        names = [h.name for h in router.route(query, 5)]
        times.append(time.perf_counter() - t0)
        r1 += bool(names) and names[0] == tool
        r5 += tool in names
    return {"R@1": r1 / len(queries), "R@5": r5 / len(queries), "n": len(queries), **latency(times)}


def latency(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {"median_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def synthetic(cards: list[SkillCard], n: int, seed: int = 7) -> list[SkillCard]:
    rng = random.Random(seed)
    vocab = sorted({w for c in cards for w in c.description.split() if w.isalpha()})
    out = []
    for i in range(n):
        base = rng.choice(cards)
        words = [w for w in base.description.split() if rng.random() > 0.3]
        for _ in range(rng.randint(3, 6)):
            words.insert(rng.randint(0, len(words)), rng.choice(vocab))
        out.append(SkillCard(f"{rng.choice(cards).name}_{rng.choice(vocab).lower()}_{i}", " ".join(words)))
    return out


def tune(router: SkillRouter, queries: list[tuple[str, str]], base: FusionWeights) -> tuple[FusionWeights, float]:
    """Grid search on precomputed per-signal z-scores (fusion is linear, so one pass of signals serves every point)."""
    sigs = [(router.signals(q), tool) for q, tool in queries]
    default = sum(s.names[int(np.argmax(fuse(s, base)))] == tool for s, tool in sigs) / len(sigs)
    print(f"  default weights (bm25 {base.bm25}, chargram {base.chargram}): train R@1 {default:.3f}")
    best = (base, -1.0)
    for wb, wc in itertools.product((0.0, 0.1, 0.2, 0.3, 0.5, 0.8), (0.0, 0.1, 0.2, 0.3, 0.5, 0.8)):
        w = FusionWeights(bm25=wb, chargram=wc, dense=1.0, utility=0.0)
        hits = sum(s.names[int(np.argmax(fuse(s, w)))] == tool for s, tool in sigs)
        if hits / len(sigs) > best[1]:
            best = (w, hits / len(sigs))
    return best


def scale_row(cards: list[SkillCard], test: list[tuple[str, str]], n: int, n_queries: int) -> dict[str, Any]:
    extra = synthetic(cards, n - len(cards))
    with tempfile.TemporaryDirectory() as tmp:
        rss0 = rss_mb()
        t0 = time.perf_counter()
        router = SkillRouter(Path(tmp) / "r.db")
        router.upsert(cards + extra)
        router.route("warm up")  # builds the in-memory snapshot
        build = time.perf_counter() - t0
        row = {
            "skills": n,
            "build_s": build,
            "rss_growth_mb": rss_mb() - rss0,
            **recall(router, random.Random(0).sample(test, n_queries)),
        }
        row["index_mb"] = router.stats().index_bytes / 2**20
        router.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tune", action="store_true", help="choose fusion weights on the train split, then exit")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cards, train, test = load()
    print(f"MetaTool: {len(cards)} skills, {len(train)} train / {len(test)} test queries")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        router = SkillRouter(Path(tmp) / "cold.db")
        router.upsert(cards)
        if args.tune:
            held = random.Random(1).sample(train, 3000)
            w, r1 = tune(router, held, router.weights)
            print(f"cold: best on train {w} R@1 {r1:.3f}")
            for k in (5, 20):
                for tool, q in examples_for(train, k):
                    router.learn(tool, q)
                seen = {q for _, q in examples_for(train, k)}
                w, r1 = tune(router, [x for x in held if x[0] not in seen], router.weights)
                print(f"learned K={k} (cumulative examples): best on train {w} R@1 {r1:.3f}")
            return
        queries = random.Random(0).sample(test, 1500) if args.quick else test
        results["cold"] = recall(router, queries)
        print(f"cold start   R@1 {results['cold']['R@1']:.3f}  R@5 {results['cold']['R@5']:.3f}  (n={len(queries)})")
        router.close()
        for k in (5,) if args.quick else (5, 20):
            router = SkillRouter(Path(tmp) / f"learned{k}.db")
            router.upsert(cards)
            t0 = time.perf_counter()
            for tool, q in examples_for(train, k):
                router.learn(tool, q)
            learn_s = time.perf_counter() - t0
            res = results[f"learned_K{k}"] = {**recall(router, queries), "learn_s": learn_s}
            print(f"learned K={k:<3} R@1 {res['R@1']:.3f}  R@5 {res['R@5']:.3f}  ({learn_s:.1f} s to learn)")
            router.close()
    print("lexical only (no embedder), cold:", end=" ")
    with tempfile.TemporaryDirectory() as tmp:
        lex = SkillRouter(Path(tmp) / "lex.db", embedder=None)
        lex.upsert(cards)
        results["cold_lexical"] = recall(lex, queries)
        print(f"R@1 {results['cold_lexical']['R@1']:.3f}  R@5 {results['cold_lexical']['R@5']:.3f}")
        lex.close()
    WordLlamaEmbedder().embed(["load the model before measuring memory"])
    sizes = (199, 10_000) if args.quick else (199, 10_000, 100_000)
    results["scale"] = []
    print(f"{'skills':>8} {'build s':>8} {'RSS+ MB':>8} {'index MB':>8} {'median ms':>9} {'p99 ms':>7} {'R@1':>6}")
    for n in sizes:
        row = scale_row(cards, test, n, 300 if args.quick else 1000)
        results["scale"].append(row)
        print(
            f"{n:>8} {row['build_s']:>8.1f} {row['rss_growth_mb']:>8.0f} {row['index_mb']:>8.1f} "
            f"{row['median_ms']:>9.2f} {row['p99_ms']:>7.2f} {row['R@1']:>6.3f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
