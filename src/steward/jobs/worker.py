"""The Celery application, configured from settings, with logs routed through structlog."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging

from steward.platform.logging import configure_logging
from steward.settings import Settings, get_settings


def create_celery(settings: Settings) -> Celery:
    broker = settings.broker_url
    backend = settings.redis_url
    celery = Celery("steward", broker=broker, backend=backend, include=["steward.jobs.tasks"])
    celery.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=300,
        task_soft_time_limit=240,
        result_expires=86_400,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=backend,
        redbeat_key_prefix="steward:redbeat:",
        redbeat_lock_timeout=90,
    )
    return celery


@setup_logging.connect
def _configure_worker_logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(level=settings.log_level, json=settings.json_logs)


app = create_celery(get_settings())
