"""Daily token counters written in batches: calls ending together are one write, every token
is counted, and a failed write is reported to every caller it concerned."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant import usage as usage_module
from steward.assistant.models import UsageDay
from steward.assistant.providers import Usage
from steward.assistant.usage import UsageMeter
from steward.platform.resources import Resources
from tests.conftest import make_settings
from tests.engines import EngineSet
from tests.factories import make_account


async def test_calls_ending_together_are_one_write_and_all_counted(
    client: httpx.AsyncClient, engines: EngineSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = uuid.UUID((await make_account(client)).id)
    writes: list[int] = []
    add_counts = usage_module.add_counts

    async def counted(
        session: AsyncSession, row: usage_module.Row, counts: usage_module.Counts
    ) -> None:
        writes.append(counts.requests)
        await add_counts(session, row, counts)

    monkeypatch.setattr(usage_module, "add_counts", counted)
    # One pooled connection: 200 writes each holding one would queue; one batch does not.
    resources = Resources.open(make_settings(engines, db_pool_size=1, db_max_overflow=0))
    try:
        await asyncio.gather(*(
            resources.get(UsageMeter).record(user_id=alice, api_key_id=None, usage=Usage(1, 2, 3))
            for _ in range(200)
        ))  # fmt: skip
        await resources.get(UsageMeter).record(
            user_id=alice, api_key_id=None, usage=Usage(10, 0, 10)
        )
        async with resources.transaction() as session:
            row = (
                await session.execute(select(UsageDay).where(UsageDay.user_id == alice))
            ).scalar_one()
    finally:
        await resources.close()
    assert writes == [200, 1]
    assert (row.requests, row.prompt_tokens, row.completion_tokens, row.total_tokens) == (
        201, 210, 400, 610,
    )  # fmt: skip


async def test_a_failed_write_is_reported_to_each_caller() -> None:
    @asynccontextmanager
    async def broken() -> AsyncIterator[AsyncSession]:
        raise ConnectionError("database unreachable")
        yield  # pragma: no cover

    meter = UsageMeter(broken)
    results = await asyncio.gather(
        *(
            meter.record(user_id=uuid.uuid4(), api_key_id=None, usage=Usage(1, 1, 2))
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    assert [type(r) for r in results] == [ConnectionError] * 3
    await meter.aclose()
