"""BM25 over SQLite FTS5: the exact-term signal of the router, persisted with the skills.

Why FTS5 and pre-tokenized text: SQLite is already the source of truth, FTS5 keeps its inverted index transactional
with the skill rows, and its `bm25()` runs in C. FTS5's own tokenizers know neither identifiers nor Chinese, so the
`Analyzer` does the linguistics and FTS5 receives space-joined terms (`unicode61` then only splits on the spaces).

Two columns: `card` (name + description + tags) and `examples` (queries this skill served successfully, fed by
`SkillRouter.learn`). FTS5 sums the per-column BM25 with the given weights, which is the MetaTool "examples appended
to the skill text" floor with a knob on how much past examples count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

TABLE = "skill_terms"
SCHEMA = (
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {TABLE} USING fts5(card, examples, tokenize='unicode61 remove_diacritics 0')"
)

# Only the top rows come back: z-scoring then treats every other skill as 0. That slightly underestimates the spread
# (the tail of weak matches is missing) but a window aggregate over all matches cost 1.6x the query time at 10k skills.
_SEARCH = f"""
SELECT rowid, -bm25({TABLE}, ?, ?) AS s FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY s DESC LIMIT ?
"""


@dataclass(frozen=True)
class Bm25Result:
    """Top matches plus the sum and sum of squares of their scores (everything else counts as 0)."""

    rowids: list[int]
    scores: list[float]
    total: float
    total_sq: float


def put(conn: Any, rowid: int, card: Sequence[str], examples: Sequence[str]) -> None:
    """Replace the indexed terms of one skill (inside the caller's transaction)."""
    conn.execute(f"DELETE FROM {TABLE} WHERE rowid = ?", (rowid,))
    conn.execute(
        f"INSERT INTO {TABLE}(rowid, card, examples) VALUES (?, ?, ?)", (rowid, " ".join(card), " ".join(examples))
    )


def delete(conn: Any, rowid: int) -> None:
    """Drop one skill from the index."""
    conn.execute(f"DELETE FROM {TABLE} WHERE rowid = ?", (rowid,))


def match_expr(terms: Sequence[str]) -> str:
    """An OR of the distinct terms, each quoted so FTS5 never reads them as operators."""
    distinct = dict.fromkeys(t for t in terms if t)
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in distinct)


def search(conn: Any, terms: Sequence[str], limit: int, weights: tuple[float, float] = (1.0, 1.0)) -> Bm25Result:
    """BM25 (higher is better) of the skills sharing at least one term with the query."""
    expr = match_expr(terms)
    if not expr:
        return Bm25Result([], [], 0.0, 0.0)
    rows = conn.execute(_SEARCH, (weights[0], weights[1], expr, limit)).fetchall()
    if not rows:
        return Bm25Result([], [], 0.0, 0.0)
    scores = [float(r[1]) for r in rows]
    return Bm25Result([r[0] for r in rows], scores, sum(scores), sum(x * x for x in scores))
