"""Calling providers without falling over: retries before the first token, a circuit breaker
per provider, an optional fallback when one is open, and the metrics and logs of all three.

Retries stop once a chunk exists: after that, the client may already have text, and a second
attempt would show it a different answer spliced onto the first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Gauge, Histogram

from steward.assistant.offline import OfflineProvider
from steward.assistant.provider_errors import (
    CircuitOpen,
    FirstTokenTimeout,
    ProviderError,
    ProviderUnavailable,
)
from steward.assistant.providers import ChatRequest, Chunk, OpenAICompatible, Provider
from steward.platform.resources import provide
from steward.settings import Settings

log = structlog.get_logger(__name__)

CALLS = Counter(
    "steward_provider_calls_total",
    "Provider call attempts by provider and outcome (ok, unavailable, rejected, error, open).",
    ["provider", "outcome"],
)
RETRIES = Counter(
    "steward_provider_retries_total", "Retries before the first token, by provider.", ["provider"]
)
FALLBACKS = Counter(
    "steward_provider_fallbacks_total", "Runs sent to the fallback provider.", ["provider"]
)
BREAKER_STATE = Gauge(
    "steward_provider_breaker_open", "1 while a provider's circuit is open (or half-open).",
    ["provider"], multiprocess_mode="livemax",
)  # fmt: skip
FIRST_TOKEN = Histogram(
    "steward_provider_first_token_seconds",
    "Time from the call to the provider's first chunk.",
    ["provider"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
# Retry-After values beyond this are not waited for: the caller gets an error instead.
_MAX_HONOURED_RETRY_AFTER_S = 30.0


class CircuitBreaker:
    """Closed until `failures` consecutive failures, then open for `reset_s`; then half-open,
    letting one probe through: its success closes the circuit, its failure opens it again.

    Written here rather than taken from a library: the maintained breakers (pybreaker,
    purgatory) are synchronous or need their own storage, and this is per process on purpose:
    each API process judges the provider by what it sees itself."""

    def __init__(self, name: str, *, failures: int, reset_s: float) -> None:
        self.name = name
        self._threshold = failures
        self._reset_s = reset_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at >= self._reset_s:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        if self._opened_at is not None:
            log.info("provider.circuit_closed", provider=self.name)
        self._failures = 0
        self._opened_at = None
        self._probing = False
        BREAKER_STATE.labels(self.name).set(0)

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            if self._opened_at is None or self._probing:
                log.warning("provider.circuit_opened", provider=self.name, failures=self._failures)
            self._opened_at = time.monotonic()
            self._probing = False
            BREAKER_STATE.labels(self.name).set(1)


@dataclass(slots=True)
class Opened:
    """A stream that has produced its first chunk (None for an empty reply)."""

    provider: Provider
    model: str
    first: Chunk | None
    rest: AsyncIterator[Chunk]
    attempts: int

    async def chunks(self) -> AsyncIterator[Chunk]:
        if self.first is not None:
            yield self.first
        async for chunk in self.rest:
            yield chunk


async def _first_chunk(
    provider: Provider, request: ChatRequest
) -> tuple[Chunk | None, AsyncIterator[Chunk]]:
    iterator = aiter(provider.stream(request))
    started = time.perf_counter()
    try:
        async with asyncio.timeout(provider.config.first_token_timeout_s):
            first: Chunk | None = await anext(iterator)
    except TimeoutError:
        raise FirstTokenTimeout(
            f"{provider.name} sent nothing within {provider.config.first_token_timeout_s:g}s",
            provider=provider.name,
        ) from None
    except StopAsyncIteration:
        first = None
    FIRST_TOKEN.labels(provider.name).observe(time.perf_counter() - started)
    return first, iterator


# Chat Completions parameters every provider takes; any other option is a vendor's.
PORTABLE_OPTIONS = frozenset(
    {"tool_choice", "temperature", "top_p", "stop", "seed", "response_format"}
)


class Providers:
    """Every configured provider (and the offline one), each with its own breaker."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {
            "offline": OfflineProvider(delay_s=settings.assistant_offline_delay_s)
        }
        for name, config in settings.assistant_providers.items():
            self._providers[name] = OpenAICompatible(name, config)
        self._breakers = {
            name: CircuitBreaker(
                name,
                failures=settings.assistant_breaker_failures,
                reset_s=settings.assistant_breaker_reset_s,
            )
            for name in self._providers
        }
        self.default = settings.default_provider
        self.fallback = settings.assistant_fallback_provider

    def names(self) -> list[str]:
        """What clients may ask for: offline only when it is the default."""
        return [n for n in self._providers if n != "offline" or self.default == "offline"]

    def offered(self) -> list[tuple[str, Provider]]:
        """(model, provider) for every model clients may ask for, each provider's own first."""
        return [(model, provider) for name in self.names()
                for provider in (self._providers[name],)
                for model in (provider.config.model, *provider.config.models)]  # fmt: skip

    def get(self, name: str | None) -> Provider | None:
        name = name or self.default
        return self._providers[name] if name in self.names() else None

    def breaker(self, name: str) -> CircuitBreaker:
        return self._breakers[name]

    async def open(self, provider: Provider, request: ChatRequest) -> Opened:
        """Call `provider` (retrying transient failures), or the fallback if its circuit is
        open. Raises ProviderError when neither produced a first chunk."""
        try:
            return await self._open_one(provider, request)
        except CircuitOpen:
            fallback = self._providers.get(self.fallback) if self.fallback else None
            if fallback is None or fallback is provider:
                raise
            FALLBACKS.labels(fallback.name).inc()
            log.warning("provider.fallback", provider=provider.name, fallback=fallback.name)
            # The fallback gets the request in its own terms: its model, and of the vendor
            # parameters only those it allows (another vendor's could be refused outright).
            allowed = PORTABLE_OPTIONS | set(fallback.config.extra_body_allowed)
            options = {key: value for key, value in request.options.items() if key in allowed}
            return await self._open_one(
                fallback,
                dataclasses.replace(request, model=fallback.config.model, options=options),
            )

    async def _open_one(self, provider: Provider, request: ChatRequest) -> Opened:
        """The call with its retries: a transient failure (ProviderUnavailable) is tried
        again up to `max_retries` times, after the provider's Retry-After or else a full-
        jitter exponential backoff; anything else is final.

        A loop rather than tenacity, which this used before: its per-call objects (the
        retrying object, its thread-local state, the attempt's future) form reference
        cycles, garbage on every call that only the collector frees, and the collector's
        pauses were the tail of added time to first token under load (bench/RESULTS.md)."""
        breaker = self._breakers[provider.name]
        attempts = provider.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            if not breaker.allow():
                CALLS.labels(provider.name, "open").inc()
                raise CircuitOpen(f"{provider.name} is failing; circuit open",
                                  provider=provider.name)  # fmt: skip
            try:
                first, rest = await _first_chunk(provider, request)
            except ProviderUnavailable as exc:
                CALLS.labels(provider.name, "unavailable").inc()
                breaker.failure()
                if attempt == attempts:
                    raise
                wait_s = self._wait_s(exc, attempt)
                self._log_retry(provider.name, exc, attempt, wait_s)
                await asyncio.sleep(wait_s)
                continue
            except ProviderError as exc:
                # A spent account is its own outcome: every call fails until someone pays.
                outcome = "quota" if exc.cause == "quota" else exc.kind.removeprefix("provider_")
                CALLS.labels(provider.name, outcome).inc()
                # A refused request says nothing about the provider's health.
                breaker.success() if exc.status is not None else breaker.failure()
                raise
            CALLS.labels(provider.name, "ok").inc()
            breaker.success()
            return Opened(provider=provider, model=request.model, first=first, rest=rest,
                          attempts=attempt)  # fmt: skip
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _wait_s(self, exc: ProviderUnavailable, attempt: int) -> float:
        """Seconds before attempt `attempt + 1`: the provider's Retry-After if it sent one,
        else uniform in [0, min(max, base * 2 ** (attempt - 1))] (full jitter)."""
        if exc.retry_after is not None:
            if exc.retry_after > _MAX_HONOURED_RETRY_AFTER_S:
                raise exc  # waiting that long would outlast the client
            return float(exc.retry_after)
        ceiling = min(
            self._settings.assistant_retry_max_s,
            self._settings.assistant_retry_base_s * 2 ** (attempt - 1),
        )
        return random.uniform(0, ceiling)  # noqa: S311 - jitter, not a secret

    @staticmethod
    def _log_retry(name: str, exc: ProviderUnavailable, attempt: int, wait_s: float) -> None:
        RETRIES.labels(name).inc()
        log.warning(
            "provider.retry",
            provider=name,
            attempt=attempt,
            error=type(exc).__name__,
            # What the SDK or its HTTP client raised (which connection error, which timeout).
            cause=type(exc.__cause__).__name__ if exc.__cause__ else None,
            status=exc.status,
            wait_s=round(wait_s, 3),
        )

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()


provide(Providers, lambda resources: Providers(resources.settings))
