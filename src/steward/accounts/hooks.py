"""What other domains do when an account is created or deleted, in the same transaction:
accounts imports no other domain, so the app wires them (`create_app`). Notifications queues
the verification email with the sign-up (the job outbox commits with the account); the
assistant drops a deleted account's run logs from Redis once the deletion commits."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.models import User
from steward.platform.resources import Resources
from steward.settings import Settings

UserCreated = Callable[[AsyncSession, User, Settings], Awaitable[None]]
_on_user_created: list[UserCreated] = []


def on_user_created(hook: UserCreated) -> None:
    """Run `hook` for every account created through the API (once, however often called)."""
    if hook not in _on_user_created:
        _on_user_created.append(hook)


async def user_created(session: AsyncSession, user: User, settings: Settings) -> None:
    for hook in _on_user_created:
        await hook(session, user, settings)


UserDeleted = Callable[[AsyncSession, uuid.UUID, Resources], Awaitable[None]]
_on_user_deleted: list[UserDeleted] = []


def on_user_deleted(hook: UserDeleted) -> None:
    """Run `hook` before an account's rows go (it may read them and queue `after_commit`
    work for what lives outside PostgreSQL)."""
    if hook not in _on_user_deleted:
        _on_user_deleted.append(hook)


async def user_deleted(session: AsyncSession, user_id: uuid.UUID, resources: Resources) -> None:
    for hook in _on_user_deleted:
        await hook(session, user_id, resources)
