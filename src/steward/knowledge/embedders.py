"""Turning text into vectors for the knowledge search: the `Embedder` interface, and the
offline embedder that `make run` uses without any provider key.

The offline embedder is WordLlama's 256-dimension model, whose weights and tokenizer ship
inside its wheel. It is semantic (token embeddings distilled from a large language model,
averaged), not a hash: related questions and passages land near each other, in Chinese as
in English. It is also small and fast (about 0.3 s to load, tens of microseconds per short
passage), and it is no substitute for a hosted embedding model on long or subtle text.
WordLlama's own `load()` looks for its tokenizer where the wheel does not put it and then
downloads it; it is loaded here from the installed package with downloads disabled, so it
never reaches the network (tests/knowledge/test_embedders.py runs it with sockets refused).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread


class Embedder(Protocol):
    """Embeds texts; every vector of one embedder has `dimensions` floats."""

    name: str
    model: str
    dimensions: int

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class OfflineEmbedder:
    """WordLlama (l2_supercat, 256 dimensions), unit-length vectors, in a worker thread."""

    name = "offline"
    model = "wordllama-l2-supercat-256"
    dimensions = 256

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        # Loaded on first use, once per process, under a lock: threads may ask together.
        with self._lock:
            if self._model is None:
                import wordllama
                from wordllama import WordLlama

                package = Path(wordllama.__file__).parent
                self._model = WordLlama.load(
                    dim=self.dimensions, cache_dir=package, disable_download=True
                )
            return self._model

    def _embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self._loaded().embed(texts, norm=True).tolist()
        return vectors

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        return await anyio.to_thread.run_sync(self._embed, texts)
