"""Tasks that fail on purpose, loaded into test workers through TASK_MODULES."""

from __future__ import annotations

from celery import shared_task
from redis import Redis

from steward.jobs.base import StewardTask, TransientError
from steward.settings import get_settings


class QuickRetry(StewardTask):
    max_retries = 3
    retry_base_s = 0.05
    retry_cap_s = 0.2


def _redis() -> Redis:
    url = get_settings().redis_url
    assert url is not None
    return Redis.from_url(url)


@shared_task(name="tests.flaky", base=QuickRetry, bind=True)
def flaky(self: StewardTask, key: str, failures: int) -> int:
    """Fails with a transient error `failures` times, then succeeds."""
    attempt = int(_redis().incr(f"test:flaky:{key}"))
    if attempt <= failures:
        raise TransientError(f"attempt {attempt}")
    return attempt


@shared_task(name="tests.broken_until_fixed", base=QuickRetry)
def broken_until_fixed(key: str) -> str:
    """Fails for good (not transient) until the test sets the fix flag."""
    if not _redis().get(f"test:fixed:{key}"):
        raise ValueError(f"{key} is broken")
    return "fixed"
