"""Daily token and cost counters (`usage_days`): one row per day, user and API key, added to
by every run and gateway call, written in batches; what a call costs at its model's prices.

Every call of one user (or key) adds to the same row, so a write per call made calls that
ended together queue on that row's lock, each holding a pooled connection: at 1,000 streams
of one user the pool ran dry and runs ending then could not be recorded. One writer per
process now sends the counts: at once when it is idle, and what arrived while a write was in
flight added up in the next one (one statement per row, one transaction). Each caller still
waits until its tokens are stored (or learns that they were not), so nothing is counted only
in memory, and an idle process adds no delay.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from prometheus_client import Counter
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant.models import UsageDay
from steward.assistant.providers import Usage
from steward.platform.resources import provide
from steward.settings_providers import Prices


def today() -> date:
    return datetime.now(UTC).date()


_MILLION = Decimal(1_000_000)
COST = Counter("steward_assistant_cost_total",
               "Spend of runs and gateway calls at the configured prices.",
               ["provider", "currency"])  # fmt: skip


def count_cost(provider: str, spent: Decimal | None, currency: str | None) -> None:
    if spent is not None and currency is not None:
        COST.labels(provider, currency).inc(float(spent))


def cost(usage: Usage, prices: Prices | None) -> Decimal | None:
    """What `usage` cost at `prices` (per million tokens); None without prices. Decimal, so
    that a day's many small costs add up exactly."""
    if prices is None:
        return None
    cached_price = prices.input if prices.cached_input is None else prices.cached_input
    total = (
        (usage.prompt_tokens - usage.cached_tokens) * Decimal(str(prices.input))
        + usage.cached_tokens * Decimal(str(cached_price))
        + usage.completion_tokens * Decimal(str(prices.output))
    )
    return total / _MILLION


def usage_json(usage: Usage, spent: Decimal | None, currency: str | None) -> dict[str, Any]:
    """A run's `usage` event and `RunRead.usage`: tokens, and cost where prices are set."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cost": None if spent is None else float(spent),
        "currency": None if spent is None else currency,
    }


@dataclass(slots=True)
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)

    def add(self, usage: Usage, spent: Decimal | None) -> None:
        self.requests += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens
        self.cached_tokens += usage.cached_tokens
        self.reasoning_tokens += usage.reasoning_tokens
        if spent is not None:
            self.cost += spent


Row = tuple[date, uuid.UUID, uuid.UUID | None]  # (day, user, API key)


def _add_counts() -> Insert:
    statement = insert(UsageDay)
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["day", "user_id", "api_key_id"],
        set_={
            "requests": UsageDay.requests + excluded.requests,
            "prompt_tokens": UsageDay.prompt_tokens + excluded.prompt_tokens,
            "completion_tokens": UsageDay.completion_tokens + excluded.completion_tokens,
            "total_tokens": UsageDay.total_tokens + excluded.total_tokens,
            "cached_tokens": UsageDay.cached_tokens + excluded.cached_tokens,
            "reasoning_tokens": UsageDay.reasoning_tokens + excluded.reasoning_tokens,
            "cost": UsageDay.cost + excluded.cost,
        },
    )


# Built once, like the other statements of a run's path: `excluded` is an alias of the
# table whose columns, made anew per statement, are garbage only the collector frees.
_ADD_COUNTS = _add_counts()


async def add_counts(session: AsyncSession, row: Row, counts: Counts) -> None:
    """Add `counts` to one day's row for this user and key (created if absent)."""
    day, user_id, api_key_id = row
    await session.execute(_ADD_COUNTS, {
        "day": day, "user_id": user_id, "api_key_id": api_key_id,
        "requests": counts.requests, "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens, "total_tokens": counts.total_tokens,
        "cached_tokens": counts.cached_tokens, "reasoning_tokens": counts.reasoning_tokens,
        "cost": counts.cost,
    })  # fmt: skip


class UsageMeter:
    """Batches the counters' writes of this process (see the module's docstring)."""

    def __init__(
        self, transaction: Callable[[], AbstractAsyncContextManager[AsyncSession]]
    ) -> None:
        self._transaction = transaction
        self._pending: dict[Row, Counts] = {}
        self._written: asyncio.Future[None] | None = None  # done when `_pending` is stored
        self._writer: asyncio.Task[None] | None = None

    async def record(
        self,
        *,
        user_id: uuid.UUID,
        api_key_id: uuid.UUID | None,
        usage: Usage,
        cost: Decimal | None = None,
    ) -> None:
        """Add one call's tokens and cost; returns once they are stored, raises if they
        could not be."""
        loop = asyncio.get_running_loop()
        self._pending.setdefault((today(), user_id, api_key_id), Counts()).add(usage, cost)
        if self._written is None:
            self._written = loop.create_future()
        written = self._written
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write(), name="usage-meter")
        await asyncio.shield(written)

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            written, self._written = self._written, None
            assert written is not None
            try:
                async with self._transaction() as session:
                    for row in sorted(batch, key=str):  # one order: no deadlock across processes
                        await add_counts(session, row, batch[row])
            except Exception as exc:  # noqa: BLE001 - handed to every caller waiting on it
                written.set_exception(exc)
                written.exception()  # retrieved: callers that left early must not warn
            except BaseException:
                written.cancel()
                raise
            else:
                written.set_result(None)

    async def aclose(self) -> None:
        """Wait for the writes in flight (at shutdown)."""
        if self._writer is not None:
            await asyncio.wait([self._writer])


provide(UsageMeter, lambda resources: UsageMeter(resources.transaction))
