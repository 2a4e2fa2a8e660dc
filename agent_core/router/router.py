"""`SkillRouter`: picks the skills a message most likely needs (the Read step of the agent).

Three signals over each `SkillCard` (name + description + tags) and the queries it served before (`learn`):
BM25 in SQLite FTS5, char n-gram TF-IDF, and embedding cosine against a per-skill centroid (card vector plus the mean
of learned example vectors), fused per query by z-score (see `fusion.py` for the formula and how weights were chosen).

Storage: SQLite is the source of truth (rows, vectors, examples, FTS5); routing reads an immutable in-memory
`_Snapshot` (numpy matrix + char n-gram postings) rebuilt lazily after writes, because brute-force numpy over a few
thousand 256-d rows takes ~0.3 ms where any on-disk vector index costs more (routing.md).

Thread safety: every method may be called from any thread (the turn calls `route` via `asyncio.to_thread`). One lock
serialises SQLite use and snapshot rebuilds; a route holds it only for the FTS5 query (~1 ms), and scores against a
snapshot that writers replace but never mutate. Embedding (upsert, learn, query) runs outside the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ..skills.model import SkillCard
from . import bm25, store
from .chargram import CharIndex, DocGrams, Vocabulary
from .embed import Embedder, WordLlamaEmbedder
from .fusion import FusionWeights, Signals, fuse, zscore, zscore_sparse
from .tokenize import Analyzer, readable

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RouteHit:
    """One routed skill: `why` is a short human-readable reason (matched terms and/or semantic similarity)."""

    name: str
    score: float
    why: str


@dataclass(frozen=True)
class RouterStats:
    """What the router holds and how it is running."""

    skills: int
    examples: int
    embedder: str | None
    degraded: bool  # True while the embedder fails: routing is lexical only
    index_bytes: int  # in-memory snapshot (vectors + char n-gram postings)
    last_rebuild_ms: float


@dataclass
class _Entry:
    id: int
    card: SkillCard
    grams: DocGrams
    vector: F32 | None = None  # normalised card vector
    ex_sum: F32 | None = None  # sum of normalised example vectors
    n_ex: int = 0
    ex_terms: list[str] = field(default_factory=list)
    utility: float = 0.0


@dataclass(frozen=True)
class _Snapshot:
    names: list[str]
    row_of: dict[int, int]  # skill id -> row
    ids: list[int]  # row -> skill id
    chars: CharIndex
    matrix: F32 | None  # one L2-normalised centroid per row (zeros when the skill has no vector yet)
    utility: F32


def card_text(card: SkillCard) -> str:
    """What is indexed and embedded for a card: the identifier made readable, then description and tags."""
    return " ".join([readable(card.name) + ":", card.description, *card.tags])


def _unit(v: F32) -> F32:
    return (v / max(float(np.linalg.norm(v)), 1e-9)).astype(np.float32)


class SkillRouter:
    """Routes messages to skills. `embedder="default"` = offline wordllama; `None` = lexical only (BM25 + chars)."""

    def __init__(
        self,
        db_path: Path | str,
        embedder: Embedder | Literal["default"] | None = "default",
        weights: FusionWeights | None = None,
        max_examples: int = 100,
    ) -> None:
        self._embedder: Embedder | None = WordLlamaEmbedder() if embedder == "default" else embedder
        self.weights = weights or FusionWeights()
        self._max_examples = max_examples
        self._lock = threading.RLock()
        self._analyzer = Analyzer()
        self._vocab = Vocabulary()
        self._entries: dict[str, _Entry] = {}
        self._snap: _Snapshot | None = None
        self._chars: CharIndex | None = None  # reused by rebuilds that only changed vectors/utility (learn)
        self._degraded = False
        self._rebuild_ms = 0.0
        self._conn = store.connect(db_path)
        self._load()

    # ---- writes -------------------------------------------------------------------------------------------------
    def upsert(self, cards: Iterable[SkillCard]) -> int:
        """Add or update skills by name (unchanged cards are skipped); returns how many were (re)indexed."""
        with self._lock:
            changed = [
                c
                for c in {c.name: c for c in cards}.values()
                if self._entries.get(c.name, None) is None or self._entries[c.name].card != c
            ]
        if not changed:
            return 0
        vectors = self._embed([card_text(c) for c in changed])
        with self._lock:
            self._conn.execute("BEGIN")
            for i, card in enumerate(changed):
                vec = None if vectors is None else _unit(vectors[i])
                name = self._embedder.name if vec is not None and self._embedder else None
                sid = store.save_skill(self._conn, card.name, card.description, card.tags, name, vec)
                old = self._entries.get(card.name)
                entry = _Entry(sid, card, self._vocab.doc(card_text(card)), vec)
                if old is not None:
                    entry.ex_sum, entry.n_ex, entry.ex_terms = old.ex_sum, old.n_ex, old.ex_terms
                    entry.utility = old.utility
                bm25.put(self._conn, sid, self._analyzer.terms(card_text(card)), entry.ex_terms)
                self._entries[card.name] = entry
            self._conn.execute("COMMIT")
            self._snap = self._chars = None
        return len(changed)

    def names(self) -> list[str]:
        """Every indexed skill (to drop the ones the library no longer has)."""
        with self._lock:
            return list(self._entries)

    def remove(self, names: Iterable[str]) -> int:
        """Forget skills (and their learned examples); returns how many existed."""
        with self._lock:
            gone = [self._entries.pop(n) for n in set(names) if n in self._entries]
            self._conn.execute("BEGIN")
            for entry in gone:
                store.delete_skill(self._conn, entry.id)
            self._conn.execute("COMMIT")
            if gone:
                self._snap = self._chars = None
        return len(gone)

    def learn(self, name: str, query: str) -> bool:
        """Record that `name` served `query` successfully; later routing uses it. False if the skill is unknown."""
        vectors = self._embed([query])
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                return False
            vec = None if vectors is None else _unit(vectors[0])
            emb = self._embedder.name if vec is not None and self._embedder else None
            self._conn.execute("BEGIN")
            if store.add_example(self._conn, entry.id, query, emb, vec, self._max_examples):
                self._load_examples(entry)  # the oldest example was dropped: recompute from what is stored
            else:
                entry.n_ex += 1
                entry.ex_terms = entry.ex_terms + self._analyzer.terms(query)
                if vec is not None:
                    entry.ex_sum = vec if entry.ex_sum is None else entry.ex_sum + vec
            bm25.put(self._conn, entry.id, self._analyzer.terms(card_text(entry.card)), entry.ex_terms)
            self._conn.execute("COMMIT")
            self._snap = None
        return True

    def set_utility(self, name: str, value: float) -> None:
        """Set the utility prior of a skill (e.g. from success/failure rates); 0 = neutral. See fusion.py."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.utility == value:
                return  # unchanged: no write, no snapshot rebuild (refreshed every few minutes for every skill)
            self._conn.execute("UPDATE skills SET utility = ? WHERE name = ?", (value, name))
            if name in self._entries:
                self._entries[name].utility = value
                self._snap = None

    # ---- reads --------------------------------------------------------------------------------------------------
    def route(self, query: str, k: int = 5) -> list[RouteHit]:
        """The `k` best skills for `query`, best first."""
        snap = self._snapshot()
        if not snap.names or k <= 0 or not query.strip():
            return []
        sig = self._signals(snap, query, max(100, 4 * k))
        fused = fuse(sig, self.weights)
        k = min(k, len(snap.names))
        top = np.argpartition(-fused, k - 1)[:k]
        top = top[np.argsort(-fused[top], kind="stable")]
        return self._explain(snap, [int(r) for r in top], fused, sig.cosine, set(sig.terms))

    def signals(self, query: str, bm25_limit: int = 100) -> Signals:
        """Each signal's z-scores over all skills for `query` (what `route` fuses; used to tune weights)."""
        return self._signals(self._snapshot(), query, bm25_limit)

    def _signals(self, snap: _Snapshot, query: str, bm25_limit: int) -> Signals:
        n = len(snap.names)
        terms = self._analyzer.terms(query)
        with self._lock:
            res = bm25.search(self._conn, terms, bm25_limit, (1.0, self.weights.examples_bm25))
        z_bm25 = np.zeros(n, np.float32)
        mean, std = zscore_sparse(n, res.total, res.total_sq)
        if std > 0:  # skills not returned count as 0 and so sit at -mean/std
            z_bm25 += np.float32(-mean / std)
            for rowid, score in zip(res.rowids, res.scores, strict=True):
                if (row := snap.row_of.get(rowid)) is not None:
                    z_bm25[row] = np.float32((score - mean) / std)
        cosine = z_dense = None
        if snap.matrix is not None and (qv := self._embed([query])) is not None:
            cosine = snap.matrix @ _unit(qv[0])
            z_dense = zscore(cosine)
        return Signals(snap.names, terms, z_bm25, zscore(snap.chars.scores(query)), z_dense, cosine, snap.utility)

    def stats(self) -> RouterStats:
        """Counts and health, cheap enough for a status page."""
        snap = self._snapshot()
        size = snap.chars.rows.nbytes + snap.chars.weights.nbytes + snap.chars.indptr.nbytes
        size += 0 if snap.matrix is None else snap.matrix.nbytes
        with self._lock:
            n_ex = sum(e.n_ex for e in self._entries.values())
        name = self._embedder.name if self._embedder else None
        return RouterStats(len(snap.names), n_ex, name, self._degraded, size, self._rebuild_ms)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._conn.close()

    # ---- internals ----------------------------------------------------------------------------------------------
    def _embed(self, texts: Sequence[str]) -> F32 | None:
        """Embed, or None (logged once per outage) when there is no embedder or it fails: callers go lexical."""
        if self._embedder is None:
            return None
        try:
            out = np.asarray(self._embedder.embed(texts), dtype=np.float32)
            if out.shape != (len(texts), self._embedder.dim):
                raise ValueError(f"embedder returned shape {out.shape}")
        except Exception as exc:
            if not self._degraded:
                log.warning("skill router: embedder %s failed (%s); routing with BM25 only", self._embedder.name, exc)
            self._degraded = True
            return None
        if self._degraded:
            log.info("skill router: embedder %s is back", self._embedder.name)
            self._degraded = False
        return out

    def _explain(
        self, snap: _Snapshot, rows: list[int], fused: F32, cos: F32 | None, terms: set[str]
    ) -> list[RouteHit]:
        ids = {row: snap.ids[row] for row in rows}
        marks = ",".join("?" * len(ids))
        with self._lock:
            found = self._conn.execute(
                f"SELECT rowid, card, examples FROM {bm25.TABLE} WHERE rowid IN ({marks})", list(ids.values())
            ).fetchall()
        by_id = {r[0]: (set(r[1].split()), set(r[2].split())) for r in found}
        hits = []
        for row in rows:
            card_terms, ex_terms = by_id.get(ids.get(row, -1), (set(), set()))
            parts = []
            if matched := sorted(terms & card_terms)[:4]:
                parts.append("terms: " + ", ".join(matched))
            if terms & (ex_terms - card_terms):
                parts.append("like past requests")
            if cos is not None and float(cos[row]) > 0:
                parts.append(f"semantic {float(cos[row]):.2f}")
            hits.append(RouteHit(snap.names[row], float(fused[row]), "; ".join(parts) or "weak match"))
        return hits

    def _load(self) -> None:
        """Rebuild the in-memory entries from SQLite (vectors from another embedder are recomputed lazily)."""
        emb = self._embedder.name if self._embedder else None
        for row in store.skills(self._conn):
            card = SkillCard(row.name, row.description, row.tags)
            vec = row.vector if row.embedder == emb else None
            self._entries[row.name] = _Entry(row.id, card, self._vocab.doc(card_text(card)), vec, utility=row.utility)
        for entry in self._entries.values():
            self._load_examples(entry)

    def _load_examples(self, entry: _Entry) -> None:
        rows = list(store.examples(self._conn, entry.id))
        emb = self._embedder.name if self._embedder else None
        vecs = [r.vector for r in rows if r.vector is not None and r.embedder == emb]
        entry.ex_sum = np.sum(vecs, axis=0).astype(np.float32) if vecs else None
        entry.n_ex = len(rows)
        entry.ex_terms = [t for r in rows for t in self._analyzer.terms(r.query)]

    def _backfill(self) -> None:
        """Embed cards stored without a vector (embedder was down, or changed) and persist the vectors."""
        missing = [e for e in self._entries.values() if e.vector is None]
        if not missing or self._embedder is None or self._degraded:
            return
        vectors = self._embed([card_text(e.card) for e in missing])
        if vectors is None:
            return
        self._conn.execute("BEGIN")
        for entry, vec in zip(missing, vectors, strict=True):
            entry.vector = _unit(vec)
            store.save_vector(self._conn, "skills", entry.id, self._embedder.name, entry.vector)
        self._conn.execute("COMMIT")

    def _snapshot(self) -> _Snapshot:
        snap = self._snap
        if snap is not None:
            return snap
        with self._lock:
            if self._snap is None:
                started = time.perf_counter()
                self._backfill()
                self._snap = self._build()
                self._rebuild_ms = (time.perf_counter() - started) * 1000
            return self._snap

    def _build(self) -> _Snapshot:
        entries = list(self._entries.values())
        chars = self._chars or CharIndex([e.grams for e in entries], self._vocab)
        self._chars = chars
        matrix = None
        if self._embedder is not None and entries:
            matrix = np.zeros((len(entries), self._embedder.dim), np.float32)
            ratio = self.weights.card_vs_examples
            for i, e in enumerate(entries):
                base = e.vector if e.vector is not None else np.zeros(self._embedder.dim, np.float32)
                if e.ex_sum is not None and e.n_ex:
                    base = (ratio * base + e.ex_sum / e.n_ex).astype(np.float32)
                matrix[i] = _unit(base) if np.any(base) else base
        utility = np.array([e.utility for e in entries], np.float32)
        ids = [e.id for e in entries]
        row_of = {sid: i for i, sid in enumerate(ids)}
        return _Snapshot([e.card.name for e in entries], row_of, ids, chars, matrix, utility)

    def __enter__(self) -> SkillRouter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
