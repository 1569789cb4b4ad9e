"""Every Steward service in compose, the Kubernetes manifests and the systemd units starts as
declared (command, environment, folders, non-root user) against real engines, and serves or
consumes: the API answers /ready and /metrics, the worker runs a task from the work queues
(never the dead-letter queue) and serves its metrics, beat takes the scheduler's lock, and
migrate brings a fresh database to head."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis

from steward.jobs.worker import DEAD_LETTER_QUEUE, create_celery
from tests.conftest import make_settings
from tests.deploy.conftest import stop, unprivileged_user
from tests.deploy.definitions import ROOT, Service, all_services, localize
from tests.engines import EngineSet, create_database, drop_database, reachable
from tests.live import free_port
from tests.metrics import sample

pytestmark = pytest.mark.slow

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"
SOURCES = all_services()


def _start(
    argv: list[str], env: dict[str, str], log: Path, user: int | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True, user=user, group=user,
    )  # fmt: skip


def _wait(check, what: str, processes: dict[str, subprocess.Popen[bytes]], logs: Path,
          timeout: float = 90) -> object:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        for name, process in processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited ({process.returncode}): "
                            f"{(logs / f'{name}.log').read_text()[-3000:]}")  # fmt: skip
        try:
            result = check()
            if result:
                return result
        except Exception:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s; logs in {logs}")
        time.sleep(0.25)


def test_every_source_defines_the_four_roles() -> None:
    for source, services in SOURCES.items():
        assert sorted(s.name for s in services) == ["api", "beat", "migrate", "worker"], source
        for service in services:
            assert service.user not in (None, 0, "root"), (source, service.name)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_each_service_starts_and_works_as_declared(
    source: str, engines: EngineSet, tmp_path: Path
) -> None:
    services: dict[str, Service] = {s.name: s for s in SOURCES[source]}
    name = f"steward_deploy_{source}"
    database_url = asyncio.run(create_database(engines.database_url, name))
    broker = AMQP_URL if reachable("127.0.0.1", 5672) else engines.redis_spare(2)
    ports = {"api": free_port(), "worker_metrics": free_port()}
    roots = {}  # each container's (or the server's) own file system
    for role in services:
        roots[role] = root = tmp_path / role
        root.mkdir(mode=0o777)
        root.chmod(0o777)
        (root / "home").mkdir(mode=0o555)
    logs = tmp_path
    user = unprivileged_user()
    running: dict[str, subprocess.Popen[bytes]] = {}
    client = create_celery(make_settings(engines, celery_broker_url=broker))
    store = redis.Redis.from_url(engines.redis_url)
    try:
        where = {"database_url": database_url, "redis_url": engines.redis_url,
                 "broker_url": broker, "ports": ports}  # fmt: skip
        argv, env = localize(services["migrate"], root=roots["migrate"], **where)
        migrate = _start(argv, env, logs / "migrate.log", user)
        assert migrate.wait(120) == 0, (logs / "migrate.log").read_text()[-3000:]

        store.delete("steward:redbeat::lock")
        for role in ("api", "worker", "beat"):
            argv, env = localize(services[role], root=roots[role], **where)
            running[role] = _start(argv, env, logs / f"{role}.log", user)

        base = f"http://127.0.0.1:{ports['api']}"
        ready = _wait(lambda: httpx.get(f"{base}/ready", timeout=5), "the API ready", running, logs)
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert checks["postgres"] == checks["redis"] == "ok"
        assert checks.get("broker", "ok") == "ok"
        exposition = httpx.get(f"{base}/metrics", timeout=5).text
        assert sample(exposition, "steward_dependency_up", dependency="postgres") == 1.0

        pong = _wait(lambda: client.send_task("steward.ping").get(timeout=5), "a task run",
                     running, logs)  # fmt: skip
        assert pong == "pong"
        consumed = _wait(lambda: client.control.inspect(timeout=2).active_queues(),
                         "the worker's queues", running, logs)  # fmt: skip
        names = {q["name"] for queues in consumed.values() for q in queues}
        assert DEAD_LETTER_QUEUE not in names
        assert {"default", "reminders", "ingest", "assistant"} <= names

        worker_metrics = f"http://127.0.0.1:{ports['worker_metrics']}/metrics"

        def counted() -> str | None:
            text = httpx.get(worker_metrics, timeout=5).text
            ran = sample(text, "steward_tasks_total", task="steward.ping", state="success")
            return text if ran else None

        figures = _wait(counted, "the worker's metrics", running, logs)
        assert sample(str(figures), "steward_queue_depth", queue="default") is not None

        _wait(lambda: store.exists("steward:redbeat::lock"), "beat's lock", running, logs)
        time.sleep(2)
        for role, process in running.items():
            assert process.poll() is None, f"{role} stopped: {(logs / f'{role}.log').read_text()}"
    finally:
        codes = {role: stop(process) for role, process in running.items()}
        store.close()
        client.close()
        asyncio.run(drop_database(engines.database_url, name))
    # A SIGTERM is a normal stop for every role.
    assert codes == {"api": 0, "worker": 0, "beat": 0}, codes
