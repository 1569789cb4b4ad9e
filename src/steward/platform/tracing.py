"""OpenTelemetry traces: server spans for HTTP requests, exported over OTLP/HTTP when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set (or only used to correlate logs when `TRACING=true`
without one). Log lines carry `trace_id`/`span_id` while a span is current, and the trace
context travels into Celery tasks with the request id (see `steward.jobs.worker`)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace

from steward.settings import Settings

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
    _configured = True
    return True


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
