"""What the assistant cost: a user's own usage and quotas (scope assistant), and every
user's (admin). Tokens and cost side by side; cost in the configured prices' currency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request

from steward.accounts.deps import Admin, CurrentUserId
from steward.accounts.limits import RateLimited
from steward.assistant import repository, service
from steward.assistant.deps import AssistantUser
from steward.assistant.schemas import (
    AdminUsageReport,
    UsageDayRead,
    UsageDayTotal,
    UsageReport,
    UserUsageRead,
)
from steward.platform.api import API_V1
from steward.platform.deps import Session, resources_of

router = APIRouter(prefix=API_V1, tags=["assistant"], dependencies=[RateLimited])

Days = Annotated[int, Query(ge=1, le=90, description="this many UTC days, today included")]


def _left(quota: float | None, used: float) -> float | None:
    return None if quota is None else max(0.0, quota - used)


@router.get(
    "/assistant/usage",
    summary="Own tokens and cost per day and API key, with quotas (scope assistant)",
)
async def usage(
    request: Request, _: AssistantUser, user_id: CurrentUserId, session: Session, days: Days = 30
) -> UsageReport:
    settings = resources_of(request).settings
    rows = await service.usage_days(session, user_id=user_id, days=days)
    today = datetime.now(UTC).date()
    tokens = sum(row.total_tokens for row in rows if row.day == today)
    cost = float(sum(row.cost for row in rows if row.day == today))
    quota = settings.assistant_daily_tokens_per_user
    cost_quota = settings.assistant_daily_cost_per_user
    return UsageReport(
        items=[UsageDayRead.model_validate(row) for row in rows],
        currency=settings.currency,
        today_total_tokens=tokens,
        today_cost=cost,
        daily_quota_per_user=quota,
        daily_quota_per_key=settings.assistant_daily_tokens_per_key,
        remaining_today=None if quota is None else max(0, quota - tokens),
        daily_cost_quota_per_user=cost_quota,
        daily_cost_quota_per_key=settings.assistant_daily_cost_per_key,
        remaining_cost_today=_left(cost_quota, cost),
    )


@router.get("/admin/usage", tags=["admin"],
            summary="Every user's tokens and cost per day (admin)")  # fmt: skip
async def all_usage(
    request: Request,
    _: Admin,
    session: Session,
    days: Days = 30,
    limit: Annotated[int, Query(ge=1, le=1000, description="rows of `users` at most")] = 100,
) -> AdminUsageReport:
    since = datetime.now(UTC).date() - timedelta(days=days - 1)
    totals = await repository.usage_totals(session, since=since)
    by_user = await repository.usage_by_user(session, since=since, limit=limit)
    return AdminUsageReport(
        currency=resources_of(request).settings.currency,
        days=[UsageDayTotal.model_validate(row) for row in totals],
        users=[UserUsageRead.model_validate(row) for row in by_user],
    )
