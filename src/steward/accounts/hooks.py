"""What other domains do when an account is created, in the same transaction: accounts
imports no other domain, so the app wires them (`create_app`). Notifications uses this to
queue the verification email with the sign-up (the job outbox commits with the account)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.models import User
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
