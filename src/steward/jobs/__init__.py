"""Background jobs: the Celery app (`celery -A steward.jobs worker|beat`)."""

from steward.jobs.worker import app

__all__ = ["app"]
