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

import functools
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
import openai

from steward.settings import Settings
from steward.settings_providers import ProviderConfig


class EmbeddingError(Exception):
    """The embedder could not embed; `transient` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:
        # A Celery pool process reports a task's failure to its parent by pickle; rebuilt from
        # `args` alone (the default), the keyword-only argument is missing and the parent
        # process dies of the TypeError.
        return functools.partial(type(self), str(self), transient=self.transient), ()


class Embedder(Protocol):
    """Embeds texts; every vector of one embedder has the same number of floats. `space`
    names the model, so vectors of different models are never compared."""

    name: str
    model: str

    @property
    def space(self) -> str: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class OfflineEmbedder:
    """WordLlama (l2_supercat, 256 dimensions), unit-length vectors, in a worker thread."""

    name = "offline"
    model = "wordllama-l2-supercat-256"
    dimensions = 256

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def space(self) -> str:
        return f"{self.name}:{self.model}"

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


class OpenAICompatibleEmbedder:
    """Any OpenAI-compatible `/embeddings` endpoint (OpenAI, DashScope, Volcano Ark, vLLM,
    Ollama) through the official SDK, which retries 429/5xx with backoff itself."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.model = config.model
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.resolved_key() or "unused",
            max_retries=config.max_retries,
            timeout=openai.Timeout(config.total_timeout_s, connect=config.connect_timeout_s),
        )

    @property
    def space(self) -> str:
        return f"{self.name}:{self.model}"

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        try:
            response = await self._client.embeddings.create(
                model=self.model, input=texts, encoding_format="float"
            )
        except (
            openai.APIConnectionError,
            openai.RateLimitError,
            openai.InternalServerError,
        ) as exc:
            raise EmbeddingError(f"{self.name}: {type(exc).__name__}", transient=True) from exc
        except openai.APIStatusError as exc:
            raise EmbeddingError(
                f"{self.name} refused the request ({exc.status_code})",
                transient=exc.status_code in (408, 409, 429) or exc.status_code >= 500,
            ) from exc
        vectors = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
        if len(vectors) != len(texts) or len({len(v) for v in vectors}) != 1:
            raise EmbeddingError(f"{self.name} answered with malformed vectors", transient=False)
        return vectors


@lru_cache(maxsize=1)
def _offline() -> OfflineEmbedder:
    return OfflineEmbedder()  # one model in memory per process, whoever asks


def embedder_for(settings: Settings) -> Embedder:
    """The configured embedder (EMBEDDING_PROVIDER), else the offline one."""
    name = settings.default_embedder
    if name == "offline":
        return _offline()
    return OpenAICompatibleEmbedder(name, settings.embedding_providers[name])
