"""Embedders: the dense (semantic) signal of the router, behind one small protocol.

Why a protocol: the offline default (wordllama, a 19 MB static-embedding model shipped inside its pip wheel, 0.2 ms
a query) must work with no network, while teams with an embedding endpoint should be able to plug it in without
touching the router. The router stores each vector with the embedder's `name` and re-embeds when it changes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class Embedder(Protocol):
    """Maps texts to vectors. Must be safe to call from several threads; may raise (the router then degrades)."""

    @property
    def name(self) -> str:
        """Identifies the model; stored vectors from another name are recomputed."""
        ...

    @property
    def dim(self) -> int:
        """Vector length."""
        ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One float32 row per text (need not be normalised: the router L2-normalises)."""
        ...


class WordLlamaEmbedder:
    """The offline default: wordllama `l2_supercat`, 256-d, loaded lazily from the installed package's folder.

    `WordLlama.load()` with no arguments looks for its tokenizer in the wrong folder and then tries a hub download,
    which fails offline; pointing `cache_dir` at the package and disabling downloads works (routing.md).
    """

    def __init__(self, dim: int = 256) -> None:
        self._dim = dim
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"wordllama-l2_supercat-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                import wordllama

                self._model = wordllama.WordLlama.load(
                    cache_dir=os.path.dirname(wordllama.__file__), disable_download=True, dim=self._dim
                )
        return self._model

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        model = self._model or self._load()
        if not texts:
            return np.zeros((0, self._dim), np.float32)
        return np.asarray(model.embed(list(texts), norm=False), dtype=np.float32).reshape(len(texts), self._dim)


class LiteLLMEmbedder:
    """Seam for a provider embedding model through litellm (e.g. an OpenAI-compatible endpoint serving bge-m3).

    Synchronous on purpose: the router runs in a worker thread (`asyncio.to_thread`), so the blocking
    `litellm.embedding` is the right call there. Not exercised by tests (needs a live endpoint); expect ~10-100 ms a
    query, which is why it is not the default.
    """

    def __init__(self, model: str, dim: int, **kwargs: Any) -> None:
        self._model = model
        self._dim = dim
        self._kwargs = kwargs

    @property
    def name(self) -> str:
        return f"litellm-{self._model}"

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        import litellm

        response = litellm.embedding(model=self._model, input=list(texts), **self._kwargs)
        rows = [item["embedding"] for item in response.data]
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self._dim)
