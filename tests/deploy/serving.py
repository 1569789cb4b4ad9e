"""The API as production serves it (gunicorn with deploy/gunicorn.conf.py), and a steady
load of real requests for watching what a reload or a restart does to clients."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.deploy.definitions import ROOT, VENV_BIN
from tests.engines import EngineSet

# Fast password hashing and no rate limits: the load is about reloads, not sign-ins or limits.
BASE_ENV = {"PASSWORD_HASH_TIME_COST": "1", "PASSWORD_HASH_MEMORY_KIB": "1024",
            "RATE_LIMIT_ENABLED": "false", "LOG_FORMAT": "json"}  # fmt: skip


def gunicorn_env(engines: EngineSet, port: int, metrics: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, **BASE_ENV, "DATABASE_URL": engines.database_url,
            "REDIS_URL": engines.redis_url, "CELERY_BROKER_URL": engines.redis_spare(1),
            "HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": "2",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics), **extra}  # fmt: skip


def start_gunicorn(
    env: dict[str, str], log: Path, config: str = "deploy/gunicorn.conf.py"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(VENV_BIN / "gunicorn"), "-c", config, "steward.app:app"],
        env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gunicorn exited: {log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"gunicorn at {base} not ready within {timeout:.0f} s; see {log}")


def stop_gunicorn(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


@contextmanager
def gunicorn(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = start_gunicorn(env, log)
    try:
        wait_ready(f"http://127.0.0.1:{env['PORT']}", process, log)
        yield process
    finally:
        stop_gunicorn(process)


def workers_of(master: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False)
    return {int(pid) for pid in out.stdout.split()}


@dataclass
class Load:
    """Requests made while something happened: what failed, and how long /health waited."""

    answered: int = 0
    # Requests sent again on a fresh connection because the kept-alive one closed before any
    # answer (a proxy reloading or a server stopping closes idle connections): as HTTP
    # clients do for requests that are safe to repeat (RFC 9110, 9.2.2), which all of these
    # are (reads, and creations with an Idempotency-Key).
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    health_waits: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def health_max_s(self) -> float:
        return max(self.health_waits, default=0.0)


async def apply_load(
    base: str, token: str, stop: asyncio.Event, *, clients: int = 6,
    verify: ssl.SSLContext | bool = True,
) -> Load:  # fmt: skip
    """`clients` loops of GET /health, GET /api/v1/todos and POST /api/v1/todos (each with
    its own Idempotency-Key) until `stop` is set. A failure is a transport error or a 5xx."""
    load = Load()
    headers = {"Authorization": f"Bearer {token}"}

    async def send(client: httpx.AsyncClient, kind: int, n: int, key: str) -> httpx.Response:
        if kind == 0:
            return await client.get("/health")
        if kind == 1:
            return await client.get("/api/v1/todos?limit=5", headers=headers)
        return await client.post("/api/v1/todos", json={"title": f"load {n}"},
                                 headers={**headers, "Idempotency-Key": key})  # fmt: skip

    async def one(client: httpx.AsyncClient, n: int) -> None:
        kind = n % 3
        key = f"load-{time.time_ns()}-{n}"
        started = time.perf_counter()
        try:
            try:
                response = await send(client, kind, n, key)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                load.retried += 1
                response = await send(client, kind, n, key)
        except httpx.TransportError as exc:
            load.failures.append(f"{['GET /health', 'GET todos', 'POST todo'][kind]}: {exc!r}")
            return
        waited = time.perf_counter() - started
        if kind == 0:
            load.health_waits.append(waited)
        load.statuses[response.status_code] = load.statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            load.failures.append(f"{response.request.method} {response.request.url.path}: "
                                 f"{response.status_code} {response.text[:200]}")  # fmt: skip
        load.answered += 1

    async def loop(index: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30, verify=verify) as client:
            n = index
            while not stop.is_set():
                await one(client, n)
                n += clients

    await asyncio.gather(*(loop(i) for i in range(clients)))
    return load
