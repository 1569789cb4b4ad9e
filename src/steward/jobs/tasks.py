"""Celery tasks."""

from __future__ import annotations

from steward.jobs.worker import app


@app.task(name="steward.ping")
def ping() -> str:
    """A no-op round trip through broker, worker and result backend."""
    return "pong"
