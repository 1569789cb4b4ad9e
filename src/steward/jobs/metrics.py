"""Prometheus figures of the Celery worker: tasks by outcome, their durations, retries, dead
letters, and the broker's queue depths read at scrape time.

Pool processes write their figures to the multiprocess folder (PROMETHEUS_MULTIPROC_DIR); the
worker's main process sums them and serves them on WORKER_METRICS_PORT, like gunicorn's API
workers are summed by `/metrics`."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import structlog
from kombu import Connection
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client import multiprocess as _multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

TASKS = Counter(
    "steward_tasks_total",
    "Task executions a worker finished, by task name and state (success, retry, failure).",
    ["task", "state"],
)
TASK_SECONDS = Histogram(
    "steward_task_duration_seconds",
    "Time a worker spent in one execution of a task, by task name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
RETRIES = Counter(
    "steward_task_retries_total", "Retries scheduled after a transient failure, by task.", ["task"]
)
DEAD_LETTERS = Counter(
    "steward_dead_letters_total",
    "Tasks that failed for good and were written as dead letters, by task.",
    ["task"],
)

_started: dict[str, float] = {}


def task_started(task_id: str) -> None:
    _started[task_id] = time.perf_counter()


def task_finished(task_id: str, task: str, state: str | None) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        TASK_SECONDS.labels(task).observe(time.perf_counter() - started)
    TASKS.labels(task, (state or "unknown").lower()).inc()


class QueueDepth(Collector):
    """`steward_queue_depth{queue}`: messages waiting in each queue, asked of the broker on
    each scrape (a passive declare answers the count on RabbitMQ and on Redis alike). A broker
    that does not answer yields no sample rather than a stale one."""

    def __init__(self, broker_url: str, queues: Sequence[str]) -> None:
        self.broker_url = broker_url
        self.queues = tuple(queues)

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "steward_queue_depth", "Messages waiting in a broker queue.", labels=["queue"]
        )

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Registering then asks no broker anything (without it, the registry would collect).
        yield self._family()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        try:
            with Connection(self.broker_url, connect_timeout=2) as connection:
                for queue in self.queues:
                    family.add_metric([queue], self._depth(connection, queue))
        except Exception as exc:  # noqa: BLE001 - the scrape goes on with the other figures
            log.warning("metrics.queue_depth_failed", error=type(exc).__name__)
            return
        yield family

    @staticmethod
    def _depth(connection: Any, queue: str) -> int:
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except connection.channel_errors:
            return 0  # not declared yet: nothing was ever sent to it
        finally:
            with contextlib.suppress(Exception):  # a channel the broker already closed
                channel.close()


def serve(host: str, port: int, *, broker_url: str, queues: Sequence[str]) -> None:
    """Serve this worker's figures (all pool processes) in a thread of the main process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        hint = "set PROMETHEUS_MULTIPROC_DIR to count the pool processes' tasks"
        log.warning("metrics.worker_without_multiproc_dir", hint=hint)
        registry = REGISTRY
    registry.register(QueueDepth(broker_url, queues))
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics.serving", host=host, port=port)
