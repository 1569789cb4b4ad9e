"""Single-use tokens sent by email: verify an address, reset a password.

A token is `<row id>.<HMAC-SHA256 of purpose and id under SECRET_KEY>`. The row
(`AccountToken`) holds the purpose, the address, the expiry and when it was used; nothing in
the database, the job outbox or the broker is a token that works, and a token is checked
without a lookup until its MAC holds. The task that sends the email rebuilds the token from
the row's id (`encode`)."""

from __future__ import annotations

import base64
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.models import AccountToken, User
from steward.platform import security

Purpose = Literal["verify_email", "password_reset"]


def encode(token_id: uuid.UUID, purpose: Purpose, secret: str) -> str:
    mac = security.secret_digest(f"account-token:{purpose}:{token_id}", key=secret)
    tag = base64.urlsafe_b64encode(bytes.fromhex(mac)).rstrip(b"=").decode()
    return f"{token_id.hex}.{tag}"


def _decode(token: str, purpose: Purpose, secret: str) -> uuid.UUID | None:
    raw_id, _, _tag = token.partition(".")
    if len(raw_id) != 32 or len(token) > 100:
        return None
    try:
        token_id = uuid.UUID(hex=raw_id)
    except ValueError:
        return None
    return token_id if hmac.compare_digest(encode(token_id, purpose, secret), token) else None


async def issue(session: AsyncSession, *, user: User, purpose: Purpose, ttl_s: int) -> AccountToken:
    """A new token row for the user's current address (sent by a task after commit)."""
    row = AccountToken(user_id=user.id, purpose=purpose, email=user.email,
                       expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s))  # fmt: skip
    session.add(row)
    await session.flush()
    return row


async def consume(
    session: AsyncSession, *, token: str, purpose: Purpose, secret: str
) -> User | None:
    """The token's user if the token is genuine, unused, unexpired and for the account's
    current address; marks it used (with the user's other tokens of that purpose). Else None."""
    token_id = _decode(token, purpose, secret)
    if token_id is None:
        return None
    row = (
        await session.execute(
            select(AccountToken).where(AccountToken.id == token_id).with_for_update()
        )
    ).scalar_one_or_none()
    now = datetime.now(UTC)
    if row is None or row.purpose != purpose or row.used_at is not None or row.expires_at <= now:
        return None
    user = await session.get(User, row.user_id)
    if user is None or user.email != row.email:
        return None
    # Single use, and one use retires every earlier token of the same kind.
    await session.execute(
        update(AccountToken)
        .where(AccountToken.user_id == user.id, AccountToken.purpose == purpose,
               AccountToken.used_at.is_(None))
        .values(used_at=now)
    )  # fmt: skip
    return user
