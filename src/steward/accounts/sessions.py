"""Sign-in sessions per device: what a user sees of where they are signed in, and how they
sign one device out, or every other one. A session is one password (or social) sign-in and
the refresh tokens it rotates through; revoking it ends them and its access tokens."""

from __future__ import annotations

import unicodedata
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.models import LoginSession
from steward.accounts.service import revoke_session, revoke_sessions
from steward.platform.errors import NotFound

PLATFORMS = frozenset({"ios", "android", "web", "desktop", "other"})


@dataclass(frozen=True, slots=True)
class SignInDevice:
    """What the app says about the device it signs in from (`X-Device-Name`,
    `X-Device-Platform`), and the client's address."""

    name: str | None
    platform: str | None
    ip: str | None

    @classmethod
    def from_headers(cls, name: str | None, platform: str | None, ip: str | None) -> SignInDevice:
        # Shown back to the user and to nobody else: kept printable and short, never refused.
        # Control, format and separator characters become spaces; runs of spaces one.
        spaced = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in name or "")
        clean = " ".join(spaced.split())
        kind = (platform or "").strip().lower()
        return cls(name=clean.strip()[:100] or None,
                   platform=kind if kind in PLATFORMS else ("other" if kind else None),
                   ip=(ip or None) and ip[:45])  # fmt: skip


async def active(session: AsyncSession, *, user_id: uuid.UUID) -> list[LoginSession]:
    """The user's live sessions, most recently used first."""
    result = await session.execute(
        select(LoginSession)
        .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
        .order_by(LoginSession.last_used_at.desc().nulls_last(), LoginSession.created_at.desc())
    )
    return list(result.scalars())


async def sign_out(session: AsyncSession, *, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    login = await session.get(LoginSession, session_id)
    if login is None or login.user_id != user_id or login.revoked_at is not None:
        raise NotFound("no such session of yours")
    await revoke_session(session, login, reason="signed_out")


async def sign_out_others(session: AsyncSession, *, user_id: uuid.UUID, keep: uuid.UUID) -> int:
    return await revoke_sessions(session, user_id=user_id, keep=keep, reason="signed_out_elsewhere")
