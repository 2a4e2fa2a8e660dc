"""Memory recall latency: the per-user sqlite-vec index (gateway/store/note_vectors.py) at scale.

    .venv/bin/python bench/memory_recall.py [--users 500] [--notes 200]

Builds users x notes synthetic notes (random ops-flavoured word sequences), embedded with the offline
default model, then times `NoteVectors.nearest` (query embedding + KNN inside the user's partition,
what a turn pays) against, in the same run, the same KNN on an index of the same rows without a
partition key filtered by user afterwards (what an index without partitions costs).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from agent_core.router import WordLlamaEmbedder  # noqa: E402
from gateway.store.note_vectors import NoteVectors  # noqa: E402

WORDS = [
    "postgres",
    "replica",
    "lag",
    "alert",
    "kafka",
    "broker",
    "disk",
    "redis",
    "eviction",
    "nginx",
    "upstream",
    "timeout",
    "deploy",
    "friday",
    "rollback",
    "canary",
    "cluster",
    "billing",
    "payments",
    "search",
    "index",
    "backup",
    "restore",
    "certificate",
    "expiry",
    "vpn",
    "oncall",
    "pager",
    "escalation",
    "runbook",
    "dashboard",
    "grafana",
    "latency",
    "p99",
    "quota",
    "bucket",
    "region",
    "shanghai",
    "beijing",
    "hangzhou",
    "tea",
    "standup",
    "meeting",
    "prefers",
    "chinese",
    "english",
    "short",
    "answers",
    "manager",
    "team",
    "budget",
    "release",
    "freeze",
]


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--notes", type=int, default=200)
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args()
    rng = random.Random(7)
    embedder = WordLlamaEmbedder()
    users = [f"bench:bot:user{u}" for u in range(args.users)]
    with tempfile.TemporaryDirectory() as tmp:
        index = await NoteVectors.open(Path(tmp) / "v.sqlite3", embedder)
        t0 = time.perf_counter()
        note_id = 0
        for user in users:
            notes = []
            for _ in range(args.notes):
                note_id += 1
                notes.append((note_id, " ".join(rng.choices(WORDS, k=rng.randint(4, 12)))))
            await index.put(user, notes)
        build = time.perf_counter() - t0
        total = len(users) * args.notes
        print(f"{total:,} notes of {len(users)} users indexed in {build:.1f} s ({total / build:,.0f} notes/s)")

        queries = [(rng.choice(users), " ".join(rng.choices(WORDS, k=6))) for _ in range(args.queries)]
        for user, query in queries[:20]:  # warm up
            await index.nearest(user, query, 5)
        partitioned = []
        for user, query in queries:
            t = time.perf_counter()
            hits = await index.nearest(user, query, 5)
            partitioned.append(time.perf_counter() - t)
            assert len(hits) == 5

        # Baseline in the same run: one index without a partition key, filtered by user after the KNN.
        conn = index._conn
        conn.execute(
            f"CREATE VIRTUAL TABLE flat USING vec0(note_id INTEGER PRIMARY KEY, embedding float[{embedder.dim}]"
            " distance_metric=cosine, +user_key TEXT)"
        )
        conn.execute(
            "INSERT INTO flat (note_id, embedding, user_key) SELECT note_id, embedding, user_key FROM note_vectors"
        )
        flat = []
        for user, query in queries:
            t = time.perf_counter()
            vec = np.asarray(embedder.embed([query]), np.float32)[0]
            vec = (vec / max(float(np.linalg.norm(vec)), 1e-9)).astype(np.float32)
            rows = conn.execute(
                "SELECT note_id, user_key FROM flat WHERE embedding MATCH ? AND k = ? ORDER BY distance",
                (vec.tobytes(), 4096),
            ).fetchall()
            [r for r in rows if r[1] == user][:5]
            flat.append(time.perf_counter() - t)
        await index.close()

    p50, p99 = ms(partitioned, 0.5), ms(partitioned, 0.99)
    f50, f99 = ms(flat, 0.5), ms(flat, 0.99)
    print(f"recall (embed + KNN in the user's partition), {len(queries)} queries: p50 {p50:.2f} ms  p99 {p99:.2f} ms")
    print(f"baseline (same rows, no partition, KNN k=4096 then filter by user): p50 {f50:.2f} ms  p99 {f99:.2f} ms")
    print(f"baseline / partitioned, median: {statistics.median(flat) / statistics.median(partitioned):.0f}x")


if __name__ == "__main__":
    asyncio.run(main())
