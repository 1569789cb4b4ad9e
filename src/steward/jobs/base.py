"""The task base class: retries with exponential backoff and jitter for transient errors,
then a dead letter (a row admins can list and replay; on RabbitMQ also the broker's
dead-letter exchange, by rejecting the message without requeue)."""

from __future__ import annotations

import random
import traceback
from typing import TYPE_CHECKING, Any

import structlog
from celery import Task
from celery.exceptions import Reject, Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from steward.jobs import metrics, runtime
from steward.jobs.models import DeadLetter
from steward.platform.resources import Resources
from steward.settings import Settings, get_settings

log = structlog.get_logger(__name__)


class TransientError(Exception):
    """Raise from a task for a failure worth retrying (a dependency hiccup)."""


TRANSIENT: tuple[type[Exception], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    OSError,
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
)


def backoff_s(attempt: int, *, base: float = 2.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311


if TYPE_CHECKING:
    _TaskBase = Task[Any, Any]  # generic only in the type stubs
else:
    _TaskBase = Task


class StewardTask(_TaskBase):
    max_retries = 5
    retry_base_s = 2.0
    retry_cap_s = 300.0

    def retry_policy(self, settings: Settings) -> tuple[int, float]:
        """(retries, backoff base in seconds) for transient failures; a task whose policy
        is a setting overrides this (read at failure time, never at import)."""
        return self.max_retries, self.retry_base_s

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Retry:
            raise
        except TRANSIENT as exc:
            retries = self.request.retries
            max_retries, base_s = self.retry_policy(get_settings())
            if retries < max_retries:
                countdown = backoff_s(retries, base=base_s, cap=self.retry_cap_s)
                log.warning(
                    "task.retrying",
                    task=self.name,
                    attempt=retries + 1,
                    countdown_s=round(countdown, 2),
                    error=type(exc).__name__,
                )
                metrics.RETRIES.labels(self.name).inc()
                raise self.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc
            self._give_up(exc, args, kwargs)
            raise Reject(exc, requeue=False) from exc
        except Exception as exc:
            self._give_up(exc, args, kwargs)
            raise Reject(exc, requeue=False) from exc

    def gave_up(self, exc: BaseException, args: Any, kwargs: Any) -> None:
        """Called once when the task fails for good, after its dead letter is written: a
        task whose failure leaves a record half-done (a document `processing`) settles it
        here. A rejected task reports no result, so nothing else (a chord) will."""

    def _give_up(self, exc: BaseException, args: Any, kwargs: Any) -> None:
        # The dead letter first: whoever sees the record settled also finds the letter.
        self._dead_letter(exc, args, kwargs)
        try:
            self.gave_up(exc, args, kwargs)
        except Exception:
            log.exception("task.gave_up_failed", task=self.name)

    def _dead_letter(self, exc: BaseException, args: Any, kwargs: Any) -> None:
        attempts = (self.request.retries or 0) + 1
        task_id = self.request.id or "eager"
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip()[:2000]
        metrics.DEAD_LETTERS.labels(self.name).inc()
        log.error("task.dead_lettered", task=self.name, task_id=task_id, attempts=attempts,
                  error=type(exc).__name__)  # fmt: skip

        async def record(resources: Resources) -> None:
            async with resources.transaction() as session:
                session.add(
                    DeadLetter(
                        task_id=task_id,
                        task_name=self.name,
                        args=list(args),
                        kwargs=dict(kwargs),
                        exception=summary,
                        attempts=attempts,
                    )
                )

        try:
            runtime.run(record)
        except Exception:
            log.exception("task.dead_letter_not_recorded", task=self.name, task_id=task_id)
