"""gunicorn settings for production: `gunicorn -c deploy/gunicorn.conf.py steward.app:app`.

Workers are uvicorn workers; PROMETHEUS_MULTIPROC_DIR (set it to an empty, writable folder)
makes /metrics sum every worker. Unsafe production settings stop the master before any
worker starts, with a one-line reason.

The application is loaded once, in the master, and each worker is a fork of it: a worker
starts in milliseconds instead of the seconds an import of everything takes, so `HUP`
(new settings, fresh workers) and `max_requests` recycling leave no gap in which nobody
accepts. New code needs a new master: `USR2` then `QUIT` to the old one, or a rolling restart
of instances (README, "Deployment").
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
from pathlib import Path
from typing import Any

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", str(max(2, multiprocessing.cpu_count()))))
worker_class = "steward.platform.serving.UvicornWorker"  # uvicorn's, draining on stop
preload_app = True
# gunicorn's control socket would be made under $HOME, which is read-only in the image and
# the units; signals (HUP, USR2, TERM) are this deployment's controls.
control_socket_disable = True
graceful_timeout = 20
timeout = 60
keepalive = 5
# A backstop against a slow leak, not a routine: a worker serves ~2,000 cached requests/s on
# one core (bench/RESULTS.md, Workers), at which 20,000 recycled each worker every 10 s, and
# each recycle reset the keep-alive connections it held and began a cold cache.
max_requests = 500_000
max_requests_jitter = 50_000
accesslog = None  # Steward writes its own access log with request ids and route templates
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")


def on_starting(server: Any) -> None:
    from steward.settings import ConfigError, get_settings

    try:
        get_settings().check_production()
    except ConfigError as exc:
        sys.stderr.write(f"steward: refusing to start: {exc}\n")
        sys.exit(3)
    multiproc = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiproc:
        # Files from a previous master would be summed into the new one's figures.
        shutil.rmtree(multiproc, ignore_errors=True)
        Path(multiproc).mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
