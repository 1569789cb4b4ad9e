"""`steward run` as a user starts it: serves, runs jobs, and leaves nothing behind on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from steward.jobs.worker import create_celery
from steward.settings import Settings

pytestmark = pytest.mark.slow

_ENGINE_VARS = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "API_KEY", "ENVIRONMENT")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENGINE_VARS}
    env.update(extra)
    return env


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "steward run exited early"
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout}s")


def _everything_under(process: psutil.Process, data_dir: Path) -> list[psutil.Process]:
    """The supervisor's descendants plus the engines, which run in sessions of their own."""
    found = {p.pid: p for p in process.children(recursive=True)}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline:
            found[proc.pid] = proc
    valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
    found[valkey_pid] = psutil.Process(valkey_pid)
    return list(found.values())


def test_run_serves_runs_jobs_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "steward", "run", "--port", str(port)],
        env=_clean_env(DATA_DIR=str(tmp_path), LOG_FORMAT="json"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        health = _wait_for(f"http://127.0.0.1:{port}/health", process, timeout=90)
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200

        redis_port = (tmp_path / "valkey" / "port").read_text().strip()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        celery = create_celery(Settings(_env_file=None, redis_url=redis_url))  # type: ignore[call-arg]
        assert celery.send_task("steward.ping").get(timeout=60) == "pong"

        processes = _everything_under(psutil.Process(process.pid), tmp_path)
        assert len(processes) >= 5  # api, worker (+ pool), beat, postgres, valkey
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    assert not alive, [p.info if hasattr(p, "info") else p.pid for p in alive]
    text = output.decode(errors="replace")
    assert f"http://127.0.0.1:{port}/docs" in text
    assert f"http://127.0.0.1:{port}/metrics" in text


def test_prod_refuses_default_secret_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "steward", "api"],
        env=_clean_env(
            ENVIRONMENT="prod", DATABASE_URL="postgresql://x/y", REDIS_URL="redis://x:1/0"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "SECRET_KEY" in lines[0]


def test_module_app_refuses_to_import_in_unsafe_prod() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import steward.app as m; m.app"],
        env=_clean_env(ENVIRONMENT="prod", SECRET_KEY="s" * 40),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "steward: refusing to start: DATABASE_URL, REDIS_URL must be set when ENVIRONMENT=prod"
    ]
