"""A real Celery worker process for tests that need one (import the `worker` fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery

from steward.jobs.worker import create_celery
from tests.conftest import make_settings
from tests.engines import EngineSet

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / ".steward-test" / "worker.log"
LOG.parent.mkdir(exist_ok=True)


def redis_broker(engines: EngineSet) -> str:
    """The broker on its own Redis database: the suite flushes the results database
    between tests, which must not wipe queued messages and kombu's bindings."""
    return engines.redis_spare(1)


def start_worker(
    engines: EngineSet, *, broker: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": engines.database_url,
        "REDIS_URL": engines.redis_url,
        "TASK_MODULES": "tests.jobs.tasks_for_tests",
        "LOG_FORMAT": "json",
    }
    env["CELERY_BROKER_URL"] = broker
    env.update(extra_env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "steward.jobs", "worker", "-P", "prefork", "-c",
         "2", "-Q", "default,reminders,ingest,assistant", "--without-gossip", "--without-mingle",
         "-n", f"test-{os.getpid()}-{time.time_ns()}@%h"],
        env=env,
        stdout=LOG.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def start_beat(
    engines: EngineSet, *, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A beat process (RedBeat: only the one holding the lock sends anything)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": engines.database_url,
           "REDIS_URL": engines.redis_url, "CELERY_BROKER_URL": redis_broker(engines),
           "LOG_FORMAT": "json", **(extra_env or {})}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "steward.jobs", "beat", "--max-interval", "1"],
        env=env, stdout=LOG.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def running_worker(
    engines: EngineSet, extra_env: dict[str, str] | None = None, *, broker: str | None = None
) -> Iterator[tuple[Celery, subprocess.Popen[bytes]]]:
    """A worker process (broker: the test Redis unless given), answering pings; with a
    Celery client configured the same way."""
    broker = broker or redis_broker(engines)
    process = start_worker(engines, broker=broker, extra_env=extra_env)
    client = create_celery(
        make_settings(engines, celery_broker_url=broker, task_modules="tests.jobs.tasks_for_tests")
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.send_task("steward.ping").get(timeout=5) == "pong":
                    break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
        yield client, process
    finally:
        stop_worker(process)


@pytest.fixture(scope="module")
def worker(engines: EngineSet) -> Iterator[Celery]:
    """A worker on the test Redis; yields a Celery client configured the same way."""
    with running_worker(engines) as (client, _):
        yield client
