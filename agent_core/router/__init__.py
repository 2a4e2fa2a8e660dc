"""Skill routing: which skills a message needs (BM25 + char n-grams + embeddings, z-score fused, learns from use)."""

from .embed import Embedder, LiteLLMEmbedder, WordLlamaEmbedder
from .fusion import FusionWeights
from .router import RouteHit, RouterStats, SkillRouter

__all__ = [
    "Embedder",
    "FusionWeights",
    "LiteLLMEmbedder",
    "RouteHit",
    "RouterStats",
    "SkillRouter",
    "WordLlamaEmbedder",
]
