"""`steward run` and the processes it supervises (`api`, `worker`, `beat`), and `migrate`.

Most of it is `steward run`'s supervisor (start the embedded engines and the three
processes, restart what dies with backoff, stop in order), which reads best next to the
commands it starts."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from steward.cli.common import (
    cli,
    configure_logs,
    console,
    engines_for,
    settings_or_exit,
    settings_with_engines,
)
from steward.settings import Settings, get_settings

if TYPE_CHECKING:
    from steward.engines import EmbeddedEngines

# How long children get after SIGTERM, beyond the API's own shutdown grace (SHUTDOWN_GRACE_S,
# for open streams) and uvicorn's wait for in-flight requests, before they are killed.
STOP_MARGIN_S = 10.0
# A child that exits is started again after a delay doubling from the first to the cap; one
# that ran for RESTART_RESET_S before exiting starts again after the first delay.
RESTART_FIRST_S = 1.0
RESTART_CAP_S = 30.0
RESTART_RESET_S = 60.0
# The banner waits this long for the worker to be ready, then says it is not.
WORKER_READY_WAIT_S = 120.0


@dataclass
class _Backoff:
    """When something that keeps failing may be tried again: doubling delays, capped, reset
    after a long enough good run."""

    delay_s: float = RESTART_FIRST_S
    due: float = 0.0

    def schedule(self, ran_s: float) -> float:
        if ran_s >= RESTART_RESET_S:
            self.delay_s = RESTART_FIRST_S
        wait = self.delay_s
        self.due = time.monotonic() + wait
        self.delay_s = min(RESTART_CAP_S, self.delay_s * 2)
        return wait

    def ready(self) -> bool:
        return time.monotonic() >= self.due


@dataclass
class _Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart: _Backoff | None = None  # set while waiting to start again

    def start(self, env: dict[str, str]) -> None:
        # Own process group: the terminal's Ctrl-C reaches only the supervisor, which then
        # stops children in order (API first, engines last) and can kill whole groups.
        self.process = subprocess.Popen(self.argv, env=env, start_new_session=True)  # noqa: S603
        self.started_at = time.monotonic()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def wait(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            console.print(f"[yellow]{self.name} did not stop in time; killing it[/yellow]")
        # The group may hold grandchildren (Celery's pool) even when the leader has exited.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass
class _Supervisor:
    children: list[_Child] = field(default_factory=list)
    stopping: bool = False
    stop_grace_s: float = 20.0

    def request_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        console.print(f"[bold]{signal.Signals(signum).name} received; stopping…[/bold]")

    def is_stopping(self) -> bool:
        # A method, not the attribute: a signal handler may flip it between two checks.
        return self.stopping

    def exited(self) -> list[_Child]:
        return [
            child
            for child in self.children
            if child.restart is None
            and child.process is not None
            and child.process.poll() is not None
        ]

    def tend(self, env: dict[str, str], backoffs: dict[str, _Backoff]) -> None:
        """Start again, with backoff, any child that exited; never stop the others for it."""
        for child in self.exited():
            assert child.process is not None
            # The group may still hold grandchildren (Celery's pool): they go with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, signal.SIGKILL)
            backoff = backoffs.setdefault(child.name, _Backoff())
            wait = backoff.schedule(time.monotonic() - child.started_at)
            child.restart = backoff
            console.print(
                f"[yellow]{child.name} exited with code {child.process.returncode}; "
                f"starting it again in {wait:.0f}s[/yellow]"
            )
        for child in self.children:
            if child.restart is not None and child.restart.ready() and not self.is_stopping():
                child.restart = None
                child.start(env)
                console.print(f"{child.name} started again")

    def stop_all(self) -> None:
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for child in self.children:
            child.wait(deadline)


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104


def _wait_healthy(url: str, child: _Child, supervisor: _Supervisor, timeout: float = 180) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not supervisor.is_stopping():
        if child.process is None or child.process.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def _port_taken(host: str, port: int) -> str | None:
    """Why the API could not bind HOST:PORT, or None. Bound the way uvicorn binds (with
    SO_REUSEADDR), so a port that only has connections in TIME_WAIT is not called taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return (f"cannot listen on {host}:{port}: {exc.strerror or exc}; stop what holds it "
                    "or choose another port (PORT=8001 make run)")  # fmt: skip
    return None


def _banner(settings: Settings, base: str, *, worker: bool, worker_ready: bool) -> str:
    lines = [
        f"\n[bold green]Steward is ready[/bold green] at {base}",
        f"  playground  {base}/playground",
        f"  API docs    {base}/docs   (ReDoc {base}/redoc)",
        f"  health      {base}/health   ready {base}/ready",
        f"  metrics     {base}/metrics",
    ]
    if not worker:
        lines.append("  [yellow]no worker: background runs, ingestion and emails wait[/yellow]")
    elif not worker_ready:
        lines.append("  [yellow]the worker is not ready yet; see its log above[/yellow]")
    if not settings.assistant_providers:
        lines.append("  [yellow]assistant: the OFFLINE provider (no ASSISTANT_PROVIDERS set): "
                     "deterministic replies starting with \\[offline][/yellow]")  # fmt: skip
    lines += ["  first admin: steward user create --email you@example.com --admin",
              "Ctrl-C stops everything.\n"]  # fmt: skip
    return "\n".join(lines)


def _tend_engines(engines: EmbeddedEngines, backoff: _Backoff) -> _Backoff:
    """Start again an embedded engine that died; the API, worker and beat ride it out (the
    API degrades meanwhile: fail-open limits and cache, 503s where PostgreSQL is needed)."""
    from steward.engines import EngineError

    try:
        revived = engines.revive()
    except EngineError as exc:
        wait = backoff.schedule(0)
        console.print(f"[red]an embedded engine failed to start: {exc}; retrying in {wait:.0f}s")
        return backoff
    for name in revived:
        console.print(f"[yellow]embedded {name} had stopped; started it again[/yellow]")
    return _Backoff() if revived else backoff


@cli.command()
def run(
    host: Annotated[str | None, typer.Option(envvar="HOST", help="API bind address")] = None,
    port: Annotated[int | None, typer.Option(envvar="PORT", help="API port")] = None,
    worker: Annotated[bool, typer.Option(help="Start the Celery worker")] = True,
    beat: Annotated[bool, typer.Option(help="Start the Celery beat scheduler")] = True,
) -> None:
    """Start everything: embedded engines (when no URLs are set), migrations, API, worker, beat."""
    settings = settings_or_exit()
    configure_logs(settings)
    host = host or settings.host
    port = port or settings.port
    if problem := _port_taken(host, port):
        # Before anything starts: not half a minute later, once the engines are up.
        console.print(f"[red]steward: {problem}[/red]")
        raise typer.Exit(1)

    supervisor = _Supervisor(stop_grace_s=settings.shutdown_grace_s + STOP_MARGIN_S)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)

    from steward.engines import EmbeddedEngines, EngineError

    engines: EmbeddedEngines | None = None
    env = dict(os.environ)
    try:
        if not settings.database_url or not settings.redis_url:
            engines = EmbeddedEngines(settings.data_dir)
            started = time.monotonic()
            with console.status(f"starting embedded engines in {engines.data_dir}"):
                urls = engines.start()
            console.print(
                f"engines ready in {time.monotonic() - started:.1f}s "
                f"(PostgreSQL + pgvector, Valkey) under {engines.data_dir}"
            )
            env.setdefault("DATABASE_URL", settings.database_url or urls.database_url)
            env.setdefault("REDIS_URL", settings.redis_url or urls.redis_url)
        python = sys.executable
        api = _Child(
            "api",
            [python, "-m", "steward", "api", "--host", host, "--port", str(port), "--migrate"],
        )
        supervisor.children.append(api)
        if supervisor.is_stopping():
            return
        # The API applies migrations, then serves; worker and beat start once it answers, so
        # that three interpreters do not compete for the CPU while the API boots.
        api.start(env)
        base = f"http://{host}:{port}"
        if not _wait_healthy(f"http://{_probe_host(host)}:{port}/health", api, supervisor):
            if supervisor.is_stopping():
                return
            console.print("[red]the API did not start; see its log above[/red]")
            raise typer.Exit(1)
        from steward.jobs.worker import READY_FILE_ENV

        ready_file = settings.data_dir.resolve() / "worker.ready"
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
        env[READY_FILE_ENV] = str(ready_file)
        worker_child: _Child | None = None
        for name, wanted in (("worker", worker), ("beat", beat)):
            if wanted:
                # --quiet: no Celery banner; each logs one line when ready instead.
                child = _Child(name, [python, "-m", "steward", name, "--quiet"])
                supervisor.children.append(child)
                child.start(env)
                worker_child = child if name == "worker" else worker_child
        # The banner waits for the worker, inside the supervising loop: an engine or a child
        # that dies meanwhile is tended as at any other time.
        banner_due = time.monotonic() + WORKER_READY_WAIT_S
        announced = False
        backoffs: dict[str, _Backoff] = {}
        engine_backoff = _Backoff()
        while not supervisor.is_stopping():
            if not announced:
                worker_ready = worker_child is None or ready_file.exists()
                if worker_ready or time.monotonic() > banner_due:
                    console.print(_banner(settings, base, worker=worker_child is not None,
                                          worker_ready=worker_ready))  # fmt: skip
                    announced = True
            supervisor.tend(env, backoffs)
            if engines is not None and engine_backoff.ready():
                engine_backoff = _tend_engines(engines, engine_backoff)
            time.sleep(0.5)
    except EngineError as exc:
        console.print(f"[red]steward: {exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        supervisor.stop_all()
        if engines is not None:
            engines.stop()
        console.print("stopped.")


@cli.command()
def api(
    host: Annotated[str | None, typer.Option(envvar="HOST")] = None,
    port: Annotated[int | None, typer.Option(envvar="PORT")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    migrate: Annotated[bool, typer.Option(help="apply migrations before serving")] = False,
) -> None:
    """Serve the HTTP API with uvicorn (production: gunicorn -c deploy/gunicorn.conf.py)."""
    settings = settings_with_engines()
    configure_logs(settings)
    if migrate:
        from steward.platform import migrations

        migrations.upgrade(settings.require_engines()[0])
    import uvicorn

    from steward.platform.logging import uvicorn_log_config
    from steward.platform.serving import SERVER_OPTIONS

    uvicorn.run(
        "steward.app:app",
        host=host or settings.host,
        port=port or settings.port,
        workers=workers,
        log_config=uvicorn_log_config(),
        access_log=False,
        proxy_headers=False,
        server_header=False,
        # In-flight requests get this long; open streams their grace (then a farewell).
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
        **SERVER_OPTIONS,  # type: ignore[arg-type]
    )


Quiet = Annotated[bool, typer.Option("--quiet", help="no Celery banner (one log line instead)")]


def _celery(args: list[str], *, quiet: bool = False) -> None:
    settings_with_engines()
    from steward.jobs import app as celery_app

    celery_app.start(["--quiet", *args] if quiet else args)


@cli.command()
def worker(
    concurrency: Annotated[
        int, typer.Option(envvar="WORKER_CONCURRENCY", help="worker processes")
    ] = 2,
    quiet: Quiet = False,
) -> None:
    """Run a Celery worker on the work queues (never the dead-letter queue)."""
    settings = get_settings()
    if settings.worker_metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Pool processes count tasks in files the main process sums for its metrics server;
        # set before anything imports prometheus_client.
        import tempfile

        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="steward-worker-metrics-")
    queues = ",".join(settings.worker_queues)
    _celery(
        ["worker", "--loglevel", "INFO", "--concurrency", str(concurrency), "-n", "steward@%h",
         "-Q", queues], quiet=quiet
    )  # fmt: skip


@cli.command()
def beat(quiet: Quiet = False) -> None:
    """Run the Celery beat scheduler (RedBeat: only one is active at a time)."""
    _celery(["beat", "--loglevel", "INFO"], quiet=quiet)


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Apply database migrations (to `head` by default), in every mode (see `engines_for`)."""
    settings = settings_or_exit()
    configure_logs(settings)
    from steward.platform import migrations

    with engines_for(settings, migrate=False) as ready:
        database_url, _ = ready.require_engines()
        migrations.upgrade(database_url, revision)
    console.print(f"database at {revision}")
