"""OpenTelemetry traces, exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (or
only used to correlate logs when `TRACING=true` without one).

Spans: HTTP requests (server), SQL statements (each engine, `instrument_engine`), Redis
commands, Celery tasks (the trace context travels in the message; see `steward.jobs.worker`)
and provider calls (`ProviderCall`: model, tokens, time to first token). Log lines carry
`trace_id`/`span_id` while a span is current."""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from opentelemetry import trace

from steward.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

_configured = False


def enabled(settings: Settings) -> bool:
    return settings.tracing or bool(settings.otel_exporter_otlp_endpoint)


def configure(settings: Settings, *, service: str) -> bool:
    """Install the process's tracer provider once; False when tracing is off."""
    global _configured
    if not enabled(settings):
        return False
    if _configured:
        return True
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    RedisInstrumentor().instrument(tracer_provider=provider)
    _configured = True
    return True


def instrument_engine(engine: AsyncEngine) -> None:
    """Spans for the engine's SQL statements, when this process traces. Per engine rather
    than the instrumentor's patching of `create_async_engine`: modules that imported that
    function before tracing was configured would escape it."""
    if not _configured:
        return
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    usage = get_meter("steward.db").create_up_down_counter("db.client.connections.usage")
    EngineTracer(trace.get_tracer("steward.db"), engine.sync_engine, usage)  # type: ignore[no-untyped-call]


class ProviderCall:
    """A client span over one streamed model call, with the GenAI semantic conventions'
    attributes: provider, model, tokens in and out, and time to its first token. Not made
    the current span: it lives across the run's `yield`s, where an attached context would
    be detached in another one."""

    __slots__ = ("_first_token_s", "_span", "_started")

    def __init__(self, provider: str, model: str) -> None:
        self._span = trace.get_tracer("steward.assistant").start_span(
            f"chat {model}",
            kind=trace.SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                        "gen_ai.request.model": model},
        )  # fmt: skip
        self._started = time.perf_counter()
        self._first_token_s: float | None = None

    def first_token(self) -> None:
        if self._first_token_s is None:
            self._first_token_s = time.perf_counter() - self._started
            self._span.set_attribute("steward.time_to_first_token_s", self._first_token_s)

    def answered_by(self, provider: str) -> None:
        """The provider that answered (the fallback, when the first one's circuit was open)."""
        self._span.set_attribute("gen_ai.provider.name", provider)

    def usage(self, input_tokens: int, output_tokens: int) -> None:
        self._span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        self._span.set_attribute("gen_ai.usage.output_tokens", output_tokens)

    def __enter__(self) -> ProviderCall:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _: TracebackType | None
    ) -> None:
        if exc is not None and not isinstance(exc, GeneratorExit):
            self._span.record_exception(exc)
            self._span.set_status(trace.StatusCode.ERROR, type(exc).__name__)
        self._span.end()


def instrument(app: FastAPI, settings: Settings) -> None:
    if not configure(settings, service=settings.otel_service_name):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="health,ready,metrics")


def add_trace_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current span's ids, when there is one (also a span context
    carried into a task from an API call, where this process exports nothing itself)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", f"{context.trace_id:032x}")
        event.setdefault("span_id", f"{context.span_id:016x}")
    return event
