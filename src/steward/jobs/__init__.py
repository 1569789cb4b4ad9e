"""Background jobs: the Celery app (`celery -A steward.jobs worker|beat`), built from the
settings on first access to `steward.jobs.app` (see `worker.get_app`)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from steward.jobs.worker import get_app

        return get_app()
    raise AttributeError(name)
