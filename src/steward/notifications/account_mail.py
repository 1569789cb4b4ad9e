"""The account lifecycle by email: verifying the address and resetting a forgotten password.

Each flow records a job in the caller's transaction (the outbox); a task in notifications/
tasks.py composes and sends the email. Password reset requests answer the same way, and do
the same work in the request, whether or not the account exists: the lookup happens in the
task, so neither the answer nor its timing tells who has an account."""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts import email_tokens
from steward.accounts.models import User
from steward.accounts.service import revoke_sessions, user_namespace
from steward.jobs import service as jobs
from steward.platform.errors import UnprocessableContent
from steward.platform.security import Passwords
from steward.platform.transactions import after_commit
from steward.settings import Settings

log = structlog.get_logger(__name__)

# Tasks of notifications/tasks.py.
SEND_VERIFICATION = "steward.mail.verify_email"
SEND_PASSWORD_RESET = "steward.mail.password_reset"  # noqa: S105 - a task name


def _invalid(field: str) -> UnprocessableContent:
    return UnprocessableContent(
        "the token is invalid, used or expired; ask for a new email",
        errors=[{"loc": ["body", field], "msg": "invalid, used or expired", "type": "token"}],
    )


async def request_verification(session: AsyncSession, *, user: User, settings: Settings) -> None:
    """Issue a verification token and queue its email (after sign-up, or on request)."""
    token = await email_tokens.issue(session, user=user, purpose="verify_email",
                                     ttl_s=settings.email_verification_ttl_s)  # fmt: skip
    await jobs.enqueue(session, task=SEND_VERIFICATION, args=[str(token.id)])


async def user_created(session: AsyncSession, user: User, settings: Settings) -> None:
    """The hook run with every sign-up (accounts/hooks.py): the first verification email."""
    await request_verification(session, user=user, settings=settings)


async def verify_email(session: AsyncSession, *, token: str, settings: Settings) -> User:
    user = await email_tokens.consume(session, token=token, purpose="verify_email",
                                      secret=settings.secret_key.get_secret_value())  # fmt: skip
    if user is None:
        raise _invalid("token")
    if user.email_verified_at is None:
        user.email_verified_at = datetime.now(UTC)
        await session.flush()
        after_commit(session).invalidate(user_namespace(user.id))
        log.info("user.email_verified", user_id=str(user.id))
    return user


async def request_password_reset(session: AsyncSession, *, email: str) -> None:
    """Queue the reset email's task; it looks the address up (see the module's docstring)."""
    await jobs.enqueue(session, task=SEND_PASSWORD_RESET, args=[email])


async def reset_password(
    session: AsyncSession, *, token: str, new_password: str, passwords: Passwords,
    settings: Settings,
) -> User:  # fmt: skip
    """Set the new password and sign the account out everywhere (every session, so every
    refresh token; access tokens die with their session)."""
    user = await email_tokens.consume(session, token=token, purpose="password_reset",
                                      secret=settings.secret_key.get_secret_value())  # fmt: skip
    if user is None or not user.is_active:
        raise _invalid("token")
    user.password_hash = await passwords.hash(new_password)
    # The link reached the address: it is verified too.
    user.email_verified_at = user.email_verified_at or datetime.now(UTC)
    user.updated_at = datetime.now(UTC)
    revoked = await revoke_sessions(session, user_id=user.id, keep=None, reason="password_reset")
    await session.flush()
    after_commit(session).invalidate(user_namespace(user.id))
    log.info("user.password_reset", user_id=str(user.id), sessions_revoked=revoked)
    return user
