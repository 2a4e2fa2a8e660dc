"""Per-query z-score fusion of the router's signals.

Formula, for every skill `s` and query `q` (each signal z-scored over *all* skills for this query):

    score(s, q) = w_bm25 · z(BM25) + w_char · z(char n-gram cosine) + w_dense · z(embedding cosine)
                  + w_utility · utility(s)

`utility(s)` is an optional prior from past outcomes (default 0 for every skill, so it changes nothing until a caller
sets it with `SkillRouter.set_utility`); it is added raw, in z units, so 1.0 means "as strong as one standard
deviation of a signal with weight 1".

Why z-scores and not raw scores or reciprocal rank fusion: BM25, cosine and TF-IDF live on unrelated scales that
also shift per query; z-scoring makes one weight mean the same thing on every query, and it beat RRF in every
combination measured on MetaTool (routing.md). Weights below were chosen by grid search on the MetaTool *train*
split (`bench/route.py --tune`, 3,000 sampled train queries; examples for the learned rows are the protocol's
first-K train queries, scored on the other train queries) and only then measured on test. One set serves cold and
learned libraries: train R@1 cold 0.545 (best cold-only set, bm25 0.1: 0.553), K=5 0.664 (best 0.668),
K=20 0.691 (best 0.696); card_vs_examples 0.5 and examples_bm25 1.0 were picked from 0.5/1/2 each. BM25 gains weight
once examples exist, which is why the shared optimum sits above the cold-only 0.1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FusionWeights:
    """Signal weights; `examples_bm25` is the FTS5 column weight of learned examples relative to the card (1.0)."""

    bm25: float = 0.3
    chargram: float = 0.2
    dense: float = 1.0
    utility: float = 1.0
    examples_bm25: float = 1.0
    # How much the skill's own card vector counts against the mean of its learned example vectors in its centroid.
    card_vs_examples: float = 0.5


def zscore(scores: F32) -> F32:
    """(x - mean) / std over all skills; all-equal scores carry no information and become zeros."""
    std = float(scores.std())
    if std < 1e-9:
        return np.zeros_like(scores)
    return ((scores - float(scores.mean())) / std).astype(np.float32)


def zscore_sparse(n: int, total: float, total_sq: float) -> tuple[float, float]:
    """Mean and std of `n` scores known only by their sum and sum of squares (BM25: unmatched skills score 0)."""
    if n == 0:
        return 0.0, 0.0
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    return mean, float(np.sqrt(var))


@dataclass(frozen=True)
class Signals:
    """Per-skill z-scores of each signal for one query (rows align with `names`); `dense` is None when degraded."""

    names: list[str]
    terms: list[str]
    bm25: F32
    chargram: F32
    dense: F32 | None
    cosine: F32 | None  # raw cosine, for explanations
    utility: F32


def fuse(sig: Signals, w: FusionWeights) -> F32:
    """The weighted sum of the module docstring."""
    fused = np.float32(w.bm25) * sig.bm25 + np.float32(w.chargram) * sig.chargram
    if sig.dense is not None:
        fused += np.float32(w.dense) * sig.dense
    if w.utility:
        fused += np.float32(w.utility) * sig.utility
    return fused.astype(np.float32)


def outcome_utility(ok: int, total: int, *, strength: float = 1.0, confident_after: int = 10) -> float:
    """The utility prior of a skill from its run outcomes, in z units within [-strength/2, +strength/2].

    A Laplace-smoothed success rate centred on 0.5, scaled by how much evidence there is: a skill that
    failed its only run is not buried (one bad input is no verdict), but one that keeps failing sinks
    below equally relevant skills that work, and one that keeps working wins ties. Bounded, so no
    track record outweighs a clearly better textual match (one standard deviation of a signal).
    """
    if total <= 0:
        return 0.0
    ok = min(max(ok, 0), total)
    rate = (ok + 1) / (total + 2)
    confidence = min(1.0, total / confident_after)
    return float(strength * (rate - 0.5) * confidence)
