"""The Celery application, configured from settings: queues and routes, JSON only, late
acks, time limits, RedBeat schedules from cron settings, and logs through structlog. It is
built on first use (`steward.jobs.app`), not at import: importing a task module reads no
settings. Tasks are `shared_task`s in their domain's `tasks.py`."""

from __future__ import annotations

import os
from contextvars import Token
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog
from celery import Celery, Task
from celery.schedules import crontab, schedule
from celery.signals import (
    before_task_publish,
    setup_logging,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_ready,
)
from kombu import Exchange, Queue
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from steward.jobs import metrics
from steward.platform import tracing
from steward.platform.logging import configure_logging
from steward.settings import Settings, get_settings

QUEUES = ("default", "reminders", "ingest", "assistant")
DEAD_LETTER_EXCHANGE = "steward.dlx"
DEAD_LETTER_QUEUE = "dead-letters"

ROUTES = {
    "steward.reminders.*": {"queue": "reminders"},
    "steward.ingest.*": {"queue": "ingest"},
    "steward.assistant.*": {"queue": "assistant"},
}


def cron(expression: str) -> crontab | schedule:
    """A 5-field cron expression (UTC), or `every <n>s` for an interval in seconds."""
    if expression.startswith("every "):
        return schedule(run_every=timedelta(seconds=float(expression[6:].rstrip("s"))))
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def _queues(amqp: bool) -> list[Queue]:
    if not amqp:
        return [Queue(name, routing_key=name) for name in QUEUES]
    # On RabbitMQ a rejected message (requeue=False) goes to a real dead-letter exchange.
    dead = {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, "x-dead-letter-routing-key": "dead"}
    return [
        Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=dead)
        for name in QUEUES
    ]


# Not among the app's queues: a worker started without `-Q` consumes every queue the app
# lists, and one consuming this would run each failed task once more and empty it.
DEAD_LETTERS = Queue(
    DEAD_LETTER_QUEUE, Exchange(DEAD_LETTER_EXCHANGE, type="direct"), routing_key="dead"
)


def create_celery(settings: Settings) -> Celery:
    broker = settings.broker_url
    backend = settings.redis_url
    amqp = _is_amqp(broker)
    celery = Celery(
        "steward",
        broker=broker,
        backend=backend,
        include=[
            "steward.jobs.tasks",
            "steward.todos.tasks",
            "steward.assistant.tasks",
            "steward.notifications.tasks",
            "steward.knowledge.tasks",
            *settings.task_modules,
        ],
    )
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=300,
        task_soft_time_limit=240,
        task_track_started=True,
        result_expires=86_400,
        task_queues=_queues(amqp),
        task_default_queue="default",
        task_routes=ROUTES,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=backend,
        redbeat_key_prefix="steward:redbeat:",
        redbeat_lock_timeout=90,
        beat_schedule={
            "reminders-sweep": {
                "task": "steward.reminders.sweep",
                "schedule": cron(settings.schedule_reminders),
            },
            "cleanup": {"task": "steward.cleanup", "schedule": cron(settings.schedule_cleanup)},
            "jobs-purge": {
                "task": "steward.jobs.purge",
                "schedule": cron(settings.schedule_cleanup),
            },
            "outbox-sweep": {
                "task": "steward.jobs.sweep_outbox",
                "schedule": cron(settings.schedule_outbox),
            },
            "ingest-reap": {
                "task": "steward.ingest.reap",
                "schedule": cron(settings.schedule_reap_ingestion),
            },
            "assistant-reap": {
                "task": "steward.assistant.reap",
                "schedule": cron(settings.schedule_reap_runs),
            },
        },
    )
    return celery


@setup_logging.connect
def _configure_worker_logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.json_logs)


def _is_amqp(url: str | None) -> bool:
    return bool(url and url.startswith(("amqp://", "amqps://", "pyamqp://")))


@worker_ready.connect
def _declare_dead_letters(sender: Any = None, **_: Any) -> None:
    # A worker declares only the queues it consumes; the dead-letter exchange and queue must
    # exist too, or RabbitMQ drops what is rejected into them.
    celery = getattr(sender, "app", None)
    if celery is None or not _is_amqp(celery.conf.broker_url):
        return
    with celery.connection_for_write() as connection:
        DEAD_LETTERS.bind(connection.default_channel).declare()


# Set by `steward run` for the worker it starts: a file to write once the worker consumes.
READY_FILE_ENV = "STEWARD_READY_FILE"


@worker_ready.connect
def _announce_ready(sender: Any = None, **_: Any) -> None:
    # One log line instead of Celery's banner (`steward run` starts workers with --quiet), and
    # the file `steward run` waits for before it says everything is ready.
    celery = getattr(sender, "app", None)
    consumed = (celery.amqp.queues.consume_from or celery.amqp.queues) if celery else {}
    queues = sorted(queue.name for queue in consumed.values())
    structlog.get_logger(__name__).info("worker.ready", queues=queues)
    if ready_file := os.environ.get(READY_FILE_ENV):
        Path(ready_file).write_text(str(os.getpid()))


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    # The main process, before the pool forks: the server thread lives as long as the worker.
    settings = get_settings()
    celery = getattr(sender, "app", None)
    if not settings.worker_metrics_port or celery is None:
        return
    broker = str(celery.conf.broker_url)
    queues = [*settings.worker_queues, *([DEAD_LETTER_QUEUE] if _is_amqp(broker) else [])]
    metrics.serve(settings.worker_metrics_host, settings.worker_metrics_port, broker_url=broker,
                  queues=queues)  # fmt: skip


@worker_process_init.connect
def _fresh_runtime(**_: Any) -> None:
    # Connections and loops created before the fork belong to the parent process.
    from steward.jobs import runtime

    runtime.reset()
    tracing.configure(get_settings(), service=f"{get_settings().otel_service_name}-worker")


# The request id and the trace context of whoever sent a task ride in its message headers,
# so the task's logs (and spans) join the API call that caused them.
REQUEST_ID_HEADER = "steward_request_id"
_TRACE_HEADERS = ("traceparent", "tracestate")
_open_spans: dict[str, tuple[trace.Span, Token[otel_context.Context]]] = {}


@before_task_publish.connect
def _carry_context(
    sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any
) -> None:
    if headers is None:
        return
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id and REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = request_id
    # A producer span for the send: the task's consumer span is its child, in the trace of
    # whatever sent it (a request, another task, the outbox sweeper).
    span = trace.get_tracer("steward.jobs").start_span(
        f"send {sender or headers.get('task', 'task')}",
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "celery", "messaging.message.id": headers.get("id", "")},
    )
    propagate.inject(headers, context=trace.set_span_in_context(span))
    span.end()


@task_prerun.connect
def _enter_context(
    task_id: str | None = None, task: Task[Any, Any] | None = None, **_: Any
) -> None:
    if task is None:
        return
    request = task.request
    carrier = {h: v for h in _TRACE_HEADERS if (v := getattr(request, h, None))}
    parent = propagate.extract(carrier)
    span = trace.get_tracer("steward.jobs").start_span(
        f"task {task.name}", context=parent, kind=trace.SpanKind.CONSUMER
    )
    token = otel_context.attach(trace.set_span_in_context(span, parent))
    if task_id is not None:
        _open_spans[task_id] = (span, token)
        metrics.task_started(task_id)
    structlog.contextvars.bind_contextvars(
        task=task.name, task_id=task_id, request_id=getattr(request, REQUEST_ID_HEADER, None)
    )


@task_postrun.connect
def _leave_context(
    task_id: str | None = None,
    task: Task[Any, Any] | None = None,
    state: str | None = None,
    **_: Any,
) -> None:
    structlog.contextvars.clear_contextvars()
    if task_id is not None and task is not None:
        metrics.task_finished(task_id, task.name, state)
    held = _open_spans.pop(task_id, None) if task_id is not None else None
    if held is not None:
        span, token = held
        span.end()
        otel_context.detach(token)


_app: Celery | None = None


def get_app() -> Celery:
    """This process's Celery app, built from the settings on first use."""
    global _app
    if _app is None:
        _app = create_celery(get_settings())
    return _app
