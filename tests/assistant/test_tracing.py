"""Traces an operator can follow: a todo created with a due reminder is one trace from the
HTTP request (and its SQL) through the task's send to the worker running it (and its SQL),
and an assistant run is one trace from its request through the provider call (model, tokens,
time to first token) and the run log's Redis writes.

The API's spans go to an in-memory exporter in this process; the worker's are exported over
OTLP/HTTP to a collector this test serves, and read back from there."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from steward.platform import tracing
from tests.assistant.conftest import ServedFake, assistant_settings
from tests.conftest import make_settings
from tests.engines import EngineSet
from tests.factories import make_account
from tests.fakes.openai_server import Script
from tests.live import free_port, live_server
from tests.waiting import wait_until
from tests.workers import running_worker

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    attributes: dict[str, Any]


class Collector:
    """An OTLP/HTTP trace receiver (protobuf), as a collector would be."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(a.value.string_value for a in resource_spans.resource.attributes
                                   if a.key == "service.name")  # fmt: skip
                    for scope in resource_spans.scope_spans:
                        for s in scope.spans:
                            collector.spans.append(Span(
                                s.trace_id.hex(), s.span_id.hex(),
                                s.parent_span_id.hex() or None, s.name, str(s.kind), service,
                                {a.key: a.value for a in s.attributes},
                            ))  # fmt: skip
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    served = Collector()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()


@pytest.fixture
def api_spans(engines: EngineSet) -> Iterator[InMemorySpanExporter]:
    """This process's spans (tracing configured once per process; the exporter is ours)."""
    tracing.configure(make_settings(engines, tracing=True), service="steward")
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def _local(exporter: InMemorySpanExporter) -> list[Span]:
    return [
        Span(f"{s.context.trace_id:032x}", f"{s.context.span_id:016x}",
             f"{s.parent.span_id:016x}" if s.parent else None, s.name, s.kind.name,
             str(s.resource.attributes.get("service.name")), dict(s.attributes or {}))
        for s in exporter.get_finished_spans()
    ]  # fmt: skip


def _one_connected_trace(spans: list[Span]) -> str:
    """The root span's name, after checking that the spans form one tree."""
    assert len({s.trace_id for s in spans}) == 1
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert len(roots) == 1, [s.name for s in roots]
    orphans = [s.name for s in spans if s.parent_id is not None and s.parent_id not in ids]
    assert orphans == [], f"spans whose parent is not in the trace: {orphans}"
    return roots[0].name


async def test_a_todo_with_a_due_reminder_is_one_trace_from_request_to_task(
    engines: EngineSet, collector: Collector, api_spans: InMemorySpanExporter
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    settings = make_settings(engines, tracing=True)
    with running_worker(engines, env):
        async with live_server(settings) as base, httpx.AsyncClient(base_url=base) as http:
            alice = await make_account(http)
            api_spans.clear()
            remind_at = (datetime.now(UTC) - timedelta(seconds=5)).isoformat()
            created = await http.post("/api/v1/todos", headers=alice.headers,
                                      json={"title": "traced", "remind_at": remind_at})  # fmt: skip
            assert created.status_code == 201
            root = next(s for s in _local(api_spans) if s.name == "POST /api/v1/todos")

            def worker_spans() -> list[Span]:
                mine = [s for s in collector.spans if s.trace_id == root.trace_id]
                done = any(s.name == "task steward.reminders.send" for s in mine)
                sql = any("db.system" in s.attributes or "db.system.name" in s.attributes
                          for s in mine)  # fmt: skip
                return mine if done and sql else []

            remote = await wait_until(worker_spans, within_s=20, every_s=0.2,
                                      what="the worker's spans")  # fmt: skip
    local = [s for s in _local(api_spans) if s.trace_id == root.trace_id]
    spans = local + remote
    assert _one_connected_trace(spans) == "POST /api/v1/todos"
    names = [s.name for s in spans]
    assert "send steward.reminders.send" in names
    sql_in_request = [s for s in local if s.kind == "CLIENT" and "INSERT" in s.name.upper()]
    assert sql_in_request, names
    task = next(s for s in remote if s.name == "task steward.reminders.send")
    send = next(s for s in local if s.name == "send steward.reminders.send")
    assert task.parent_id == send.span_id
    assert task.service == "steward-worker"
    assert any(s.parent_id == task.span_id for s in remote), "no span under the task"


async def test_an_assistant_run_is_one_trace_with_the_provider_call(
    engines: EngineSet,
    fake: ServedFake,
    api_spans: InMemorySpanExporter,
) -> None:
    fake.script(Script(text="traced answer", usage=(11, 3)))
    settings = assistant_settings(engines, fake.url, tracing=True)
    async with live_server(settings) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        alice = await make_account(http)
        conversation = (await http.post("/api/v1/assistant/conversations", json={},
                                        headers=alice.headers)).json()["id"]  # fmt: skip
        api_spans.clear()
        answered = await http.post(
            f"/api/v1/assistant/conversations/{conversation}/messages",
            json={"content": "hello"}, headers=alice.headers,
        )  # fmt: skip
        assert answered.status_code in (200, 201), answered.text

        def run_spans() -> list[Span]:
            spans = _local(api_spans)
            return spans if any(s.name.startswith("chat ") for s in spans) else []

        spans = await wait_until(run_spans, within_s=10, every_s=0.1, what="the provider span")
    root = next(s for s in spans if s.kind == "SERVER" and s.name.startswith("POST /api/v1/assis"))
    trace_spans = [s for s in spans if s.trace_id == root.trace_id]
    assert _one_connected_trace(trace_spans) == root.name
    chat = next(s for s in trace_spans if s.name.startswith("chat "))
    assert chat.kind == "CLIENT"
    assert chat.attributes["gen_ai.provider.name"] == "fake"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 11
    assert chat.attributes["gen_ai.usage.output_tokens"] == 3
    assert chat.attributes["steward.time_to_first_token_s"] > 0
    assert any(s.attributes.get("db.system") == "redis" or
               s.attributes.get("db.system.name") == "redis" for s in trace_spans)  # fmt: skip
    assert any(s.name.upper().startswith(("INSERT", "SELECT", "UPDATE")) for s in trace_spans)
