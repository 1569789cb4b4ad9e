"""API keys: created with a subset of their owner's scopes, shown once, stored as a keyed
digest, listed, revoked, and resolved (with their owner) on every call that sends one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.models import ApiKey, User
from steward.accounts.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
)
from steward.accounts.service import api_key_namespace
from steward.platform import security
from steward.platform.errors import (
    Forbidden,
    NotFound,
    UnprocessableContent,
)
from steward.platform.transactions import after_commit

log = structlog.get_logger(__name__)

API_KEY_PREFIX = "stw_key_"
_API_KEY_VISIBLE = 16  # characters of the secret kept in clear as its `prefix`


def _now() -> datetime:
    return datetime.now(UTC)


async def create_api_key(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    key_in: ApiKeyCreate,
    allowed_scopes: frozenset[str],
    digest_key: str,
) -> ApiKeyCreated:

    requested = set(key_in.scopes)
    excess = requested - allowed_scopes
    if excess:
        raise Forbidden(f"you cannot grant scopes you do not hold: {', '.join(sorted(excess))}")
    if key_in.expires_at is not None and key_in.expires_at <= _now():
        raise UnprocessableContent(
            "expires_at must be in the future",
            errors=[{"loc": ["body", "expires_at"], "msg": "in the past", "type": "expiry"}],
        )
    secret = security.new_secret(API_KEY_PREFIX)
    key = ApiKey(
        user_id=user_id,
        name=key_in.name,
        prefix=secret[:_API_KEY_VISIBLE],
        key_hash=security.secret_digest(secret, key=digest_key),
        scopes=sorted(requested),
        expires_at=key_in.expires_at,
    )
    session.add(key)
    await session.flush()
    log.info("api_key.created", user_id=str(user_id), api_key_id=str(key.id), scopes=key.scopes)
    return ApiKeyCreated(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=key.scopes,
        expires_at=key.expires_at,
        secret=secret,
    )


async def list_api_keys(session: AsyncSession, *, user_id: uuid.UUID) -> list[ApiKey]:
    result = await session.execute(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
    )
    return list(result.scalars())


async def get_api_key(session: AsyncSession, *, user_id: uuid.UUID, key_id: uuid.UUID) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or key.user_id != user_id:
        raise NotFound("no such API key")
    return key


async def revoke_api_key(session: AsyncSession, *, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = _now()
        await session.flush()
        after_commit(session).invalidate(api_key_namespace(key.key_hash))
        log.info("api_key.revoked", api_key_id=str(key.id))


async def resolve_api_key(session: AsyncSession, *, digest: str) -> tuple[ApiKey, User] | None:
    """The live key and its active owner for a secret's digest, or None."""
    now = _now()
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(
                ApiKey.key_hash == digest,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
                User.is_active.is_(True),
            )
        )
    ).one_or_none()
    if row is None:
        return None
    key, user = row
    if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
        # At most one write a minute per key, not one per request.
        await session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
    return key, user
