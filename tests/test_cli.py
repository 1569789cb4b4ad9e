"""`steward run` as a user starts it: serves, runs jobs, and leaves nothing behind on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
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

        _operator_commands_reach_the_running_engines(tmp_path, port)

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
    # One banner, after the worker said it is ready, with every URL and the offline notice;
    # no Celery banner.
    assert text.count("Steward is ready") == 1, text[-3000:]
    banner = text[text.index("Steward is ready") :]
    assert text.index('"worker.ready"') < text.index("Steward is ready")
    for path in ("/playground", "/docs", "/redoc", "/health", "/ready", "/metrics"):
        assert f"http://127.0.0.1:{port}{path}" in banner, path
    assert "OFFLINE provider" in banner and "starting with [offline]" in banner
    assert "-------------- " not in text and "[config]" not in text


def _steward(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "steward", *args],
        env=_clean_env(DATA_DIR=str(data_dir), LOG_FORMAT="json", COLUMNS="200", **env),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def _operator_commands_reach_the_running_engines(data_dir: Path, port: int) -> None:
    """`steward user ...` and `steward doctor` with no URLs, while `steward run` holds the
    folder: they use its engines (and the API sees the changes at once)."""
    email = "root@example.com"
    created = _steward(data_dir, "user", "create", "--email", email, "--admin",
                       STEWARD_PASSWORD="correct-horse-42")  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "using the embedded engines of the steward run" in created.stderr
    listed = _steward(data_dir, "user", "list")
    assert email in listed.stdout and "admin" in listed.stdout, listed.stdout + listed.stderr

    def sign_in() -> int:
        form = {"username": email, "password": "correct-horse-42"}
        return httpx.post(f"http://127.0.0.1:{port}/api/v1/auth/token", data=form).status_code

    assert sign_in() == 200
    assert _steward(data_dir, "user", "disable", email).returncode == 0
    assert sign_in() == 401
    assert _steward(data_dir, "user", "enable", email).returncode == 0
    assert sign_in() == 200
    demoted = _steward(data_dir, "user", "set-role", email, "user")
    assert demoted.returncode == 0 and "is now user" in demoted.stderr, demoted.stderr
    missing = _steward(data_dir, "user", "disable", "nobody@example.com")
    assert missing.returncode == 1 and "no user has the email" in missing.stderr

    doctor = _steward(data_dir, "doctor", PORT=str(port))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for line in ("postgres", "pgvector", "migrations", "redis", "api"):
        row = next(r for r in doctor.stdout.splitlines() if r.strip("│ ").startswith(line))
        assert "ok" in row, row
    assert "offline" in doctor.stdout  # the assistant's verdict names the offline provider


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _steward(tmp_path, "run", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "postgres").exists()  # no engine was started for nothing


def test_operator_commands_start_the_engines_when_nothing_runs(tmp_path: Path) -> None:
    created = _steward(tmp_path, "user", "create", "--email", "first@example.com",
                       STEWARD_PASSWORD="correct-horse-42")  # fmt: skip
    assert created.returncode == 0, created.stderr
    listed = _steward(tmp_path, "user", "list")
    assert "first@example.com" in listed.stdout
    assert not (tmp_path / "engines.json").exists()  # stopped again, folder released
    doctor = _steward(tmp_path, "doctor")
    assert doctor.returncode == 1  # nothing runs: the engines check fails, and says why
    assert "make run" in doctor.stdout


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


def _children(supervisor: psutil.Process, role: str) -> list[psutil.Process]:
    """The supervisor's children started as `python -m steward <role>`."""
    found = []
    for child in supervisor.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            cmdline = child.cmdline()
            if cmdline[2:4] == ["steward", role] and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _pid_in(path: Path) -> int | None:
    """The pid a pidfile names, or None while it is absent or being rewritten."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=3).status_code == 200
    except httpx.TransportError:
        return False


def test_run_restarts_what_dies_and_never_stops_the_api(tmp_path: Path) -> None:
    port = _free_port()
    data = tmp_path / "data"
    log = (tmp_path / "run.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "steward", "run", "--port", str(port)],
        env=_clean_env(DATA_DIR=str(data), LOG_FORMAT="json"),
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_for(f"http://127.0.0.1:{port}/health", process, timeout=90)
        supervisor = psutil.Process(process.pid)
        _until(lambda: all(_children(supervisor, r) for r in ("worker", "beat")), "worker, beat")
        (api,) = _children(supervisor, "api")
        base = f"http://127.0.0.1:{port}"
        email = "kept@example.com"
        registered = httpx.post(f"{base}/api/v1/auth/register",
                                json={"email": email, "password": "correct-horse-42"})  # fmt: skip
        assert registered.status_code == 201
        token = httpx.post(
            f"{base}/api/v1/auth/token", data={"username": email, "password": "correct-horse-42"}
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        acknowledged = []
        for title in ("before the faults",):
            created = httpx.post(f"{base}/api/v1/todos", json={"title": title}, headers=auth)
            assert created.status_code == 201
            acknowledged.append(title)

        # Each engine's server process (Valkey; PostgreSQL's postmaster), killed outright.
        for engine, pidfile in (("valkey", data / "valkey" / "valkey.pid"),
                                ("postgres", data / "postgres" / "postmaster.pid")):  # fmt: skip
            killed = _pid_in(pidfile)
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            _until(
                lambda pidfile=pidfile, killed=killed: (
                    _pid_in(pidfile) not in (None, killed) and _ready(port)
                ),
                f"{engine} started again",
            )
        helpers = [*_children(supervisor, "worker"), *_children(supervisor, "beat")]
        for helper in helpers:
            helper.kill()

        def restarted(role: str, old: psutil.Process) -> bool:
            now = _children(supervisor, role)  # read once: children come and go meanwhile
            return bool(now) and now[0].pid != old.pid

        _until(
            lambda: all(
                restarted(role, old) for role, old in zip(("worker", "beat"), helpers, strict=True)
            ),
            "worker and beat started again",
        )
        assert [p.pid for p in _children(supervisor, "api")] == [api.pid]  # never stopped
        created = httpx.post(f"{base}/api/v1/todos", json={"title": "after"}, headers=auth)
        assert created.status_code == 201
        acknowledged.append("after")
        listed = httpx.get(f"{base}/api/v1/todos", headers=auth).json()["items"]
        assert sorted(t["title"] for t in listed) == sorted(acknowledged)  # none lost
        assert process.poll() is None
        redis_port = (data / "valkey" / "port").read_text().strip()
        celery = create_celery(
            Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{redis_port}/0")  # type: ignore[call-arg]
        )
        assert celery.send_task("steward.ping").get(timeout=60) == "pong"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
            log.close()
    output = (tmp_path / "run.log").read_text(errors="replace")
    assert "valkey had stopped; started it again" in output
    assert "postgres had stopped; started it again" in output
