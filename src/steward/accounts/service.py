"""Accounts rules: sign-up, sign-in, token rotation with reuse detection, API keys, admin."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.lockout import Lockout
from steward.accounts.models import LoginSession, RefreshToken, User
from steward.accounts.schemas import (
    AdminUserUpdate,
    TokenPair,
    UserCreate,
    UserUpdate,
)
from steward.accounts.scopes import Role, scopes_for
from steward.platform import security
from steward.platform.errors import (
    Conflict,
    Unauthorized,
    UnprocessableContent,
)
from steward.platform.pagination import newest_first
from steward.platform.resources import provide
from steward.platform.security import Passwords
from steward.platform.transactions import after_commit

if TYPE_CHECKING:
    from steward.accounts.sessions import SignInDevice

log = structlog.get_logger(__name__)

REFRESH_PREFIX = "stw_rt_"


class InvalidCredentials(Unauthorized):
    slug = "invalid-credentials"


class RefreshTokenReused(Unauthorized):
    """A spent refresh token came back: its whole session is revoked, and that must stick."""

    slug = "refresh-token-reused"
    keeps_changes = True


@dataclass(frozen=True, slots=True)
class Account:
    """What a request needs to know about its user; cached, so it is plain data."""

    id: uuid.UUID
    email: str
    display_name: str | None
    role: str
    is_active: bool
    created_at: datetime
    email_verified: bool = False

    @classmethod
    def of(cls, user: User) -> Account:
        return cls(
            id=user.id,
            email=user.email,
            display_name=user.display_name,
            role=user.role,
            is_active=user.is_active,
            created_at=user.created_at,
            email_verified=user.email_verified,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "display_name": self.display_name,
            "role": self.role,
            "is_active": self.is_active,
            "created_at": self.created_at.isoformat(),
            "email_verified": self.email_verified,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Account:
        return cls(
            id=uuid.UUID(data["id"]),
            email=data["email"],
            display_name=data["display_name"],
            role=data["role"],
            is_active=data["is_active"],
            created_at=datetime.fromisoformat(data["created_at"]),
            # Entries cached before the field existed read as unverified until they expire.
            email_verified=bool(data.get("email_verified", False)),
        )


def user_namespace(user_id: uuid.UUID) -> str:
    """Cache namespace of everything derived from one user's account and sessions."""
    return f"user:{user_id}"


def api_key_namespace(digest: str) -> str:
    return f"apikey:{digest}"


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    codec: security.TokenCodec
    refresh_ttl: timedelta
    digest_key: str


def _now() -> datetime:
    return datetime.now(UTC)


# --- users ---------------------------------------------------------------------------------


async def get_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email))
    return result.scalar_one_or_none()


async def get(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def create(
    session: AsyncSession, *, user_in: UserCreate, passwords: Passwords, role: Role = Role.USER
) -> User:
    password_hash = await passwords.hash(user_in.password.get_secret_value())
    user = User(
        email=user_in.email,
        password_hash=password_hash,
        display_name=user_in.display_name,
        role=role.value,
        is_active=True,
    )
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise Conflict("an account with this email already exists") from None
    log.info("user.created", user_id=str(user.id), role=user.role)
    return user


async def update_me(
    session: AsyncSession,
    *,
    user: User,
    change: UserUpdate,
    current_session: uuid.UUID | None,
    passwords: Passwords,
) -> User:
    if change.display_name is not None:
        user.display_name = change.display_name
    if change.new_password is not None:
        assert change.current_password is not None
        if not await passwords.verify(
            change.current_password.get_secret_value(), user.password_hash
        ):
            raise UnprocessableContent(
                "current_password is incorrect",
                errors=[
                    {"loc": ["body", "current_password"], "msg": "incorrect", "type": "password"}
                ],
            )
        user.password_hash = await passwords.hash(change.new_password.get_secret_value())
        revoked = await revoke_sessions(
            session, user_id=user.id, keep=current_session, reason="password_changed"
        )
        log.info("user.password_changed", user_id=str(user.id), sessions_revoked=revoked)
    user.updated_at = _now()
    await session.flush()
    after_commit(session).invalidate(user_namespace(user.id))
    return user


async def list_users(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[User], str | None]:
    return await newest_first(
        session, select(User), at=User.created_at, key=User.id, limit=limit, cursor=cursor
    )


async def admin_update(
    session: AsyncSession, *, user: User, change: AdminUserUpdate, admin_id: uuid.UUID | None
) -> User:
    if admin_id is not None and user.id == admin_id:
        raise Conflict("administrators cannot change their own role or status")
    if change.role is not None:
        user.role = change.role.value
    if change.is_active is not None:
        user.is_active = change.is_active
        if not change.is_active:
            await revoke_sessions(session, user_id=user.id, keep=None, reason="disabled")
    user.updated_at = _now()
    await session.flush()
    after_commit(session).invalidate(user_namespace(user.id))
    log.info("user.admin_updated", user_id=str(user.id), role=user.role, active=user.is_active)
    return user


# --- sign-in and tokens ----------------------------------------------------------------------


async def authenticate(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    passwords: Passwords,
    lockout: Lockout | None = None,
) -> User:
    """The user for these credentials; the same error, in the same time, for every failure.
    With `lockout`, failures count against the address given (known or not, so that a
    lock tells nothing about who has an account) and a locked one is refused at once."""
    account = email.strip().lower()
    if lockout is not None:
        await lockout.check(account)
    user = await get_by_email(session, account)
    valid = await passwords.verify(password, user.password_hash if user else None)
    if user is None or not valid or not user.is_active:
        if lockout is not None:
            await lockout.failed(account)
        raise InvalidCredentials("incorrect email or password")
    if lockout is not None:
        await lockout.succeeded(account)
    return user


async def _issue(
    session: AsyncSession, *, user: User, login: LoginSession, policy: TokenPolicy
) -> TokenPair:
    refresh = security.new_secret(REFRESH_PREFIX)
    session.add(
        RefreshToken(
            session_id=login.id,
            token_hash=security.secret_digest(refresh, key=policy.digest_key),
            expires_at=_now() + policy.refresh_ttl,
        )
    )
    await session.flush()
    access, _ = policy.codec.issue(
        subject=user.id, session_id=login.id, scopes=scopes_for(user.role), role=user.role
    )
    return TokenPair(
        access_token=access,
        refresh_token=refresh,
        expires_in=int(policy.codec.lifetime.total_seconds()),
    )


async def login(
    session: AsyncSession, *, user: User, policy: TokenPolicy, device: SignInDevice | None = None
) -> TokenPair:
    new_login = LoginSession(user_id=user.id, last_used_at=_now())
    if device is not None:
        new_login.device_name, new_login.platform, new_login.ip = (
            device.name, device.platform, device.ip
        )  # fmt: skip
    session.add(new_login)
    await session.flush()
    log.info("session.created", user_id=str(user.id), session_id=str(new_login.id))
    return await _issue(session, user=user, login=new_login, policy=policy)


async def refresh(
    session: AsyncSession, *, token: str, policy: TokenPolicy, ip: str | None = None
) -> TokenPair:
    digest = security.secret_digest(token, key=policy.digest_key)
    row = (
        await session.execute(
            select(RefreshToken, LoginSession, User)
            .join(LoginSession, LoginSession.id == RefreshToken.session_id)
            .join(User, User.id == LoginSession.user_id)
            .where(RefreshToken.token_hash == digest)
            .with_for_update(of=RefreshToken)
        )
    ).one_or_none()
    if row is None:
        raise InvalidCredentials("refresh token is not valid")
    stored, login_session, user = row
    if stored.used_at is not None:
        await revoke_session(session, login_session, reason="refresh_reuse")
        log.warning(
            "session.refresh_reuse_detected",
            user_id=str(user.id),
            session_id=str(login_session.id),
        )
        raise RefreshTokenReused("refresh token was already used; the session is revoked")
    if login_session.revoked_at is not None or stored.expires_at <= _now() or not user.is_active:
        raise InvalidCredentials("refresh token is not valid")
    stored.used_at = login_session.last_used_at = _now()
    if ip:
        login_session.ip = ip[:45]
    return await _issue(session, user=user, login=login_session, policy=policy)


async def logout(session: AsyncSession, *, token: str, policy: TokenPolicy) -> None:
    digest = security.secret_digest(token, key=policy.digest_key)
    login_session = (
        await session.execute(
            select(LoginSession)
            .join(RefreshToken, RefreshToken.session_id == LoginSession.id)
            .where(RefreshToken.token_hash == digest)
        )
    ).scalar_one_or_none()
    if login_session is not None:
        await revoke_session(session, login_session, reason="logout")


async def revoke_session(
    session: AsyncSession, login_session: LoginSession, *, reason: str
) -> None:
    if login_session.revoked_at is None:
        login_session.revoked_at = _now()
        login_session.revoked_reason = reason
        await session.flush()
        after_commit(session).invalidate(user_namespace(login_session.user_id))


async def revoke_sessions(
    session: AsyncSession, *, user_id: uuid.UUID, keep: uuid.UUID | None, reason: str
) -> int:
    query = (
        update(LoginSession)
        .where(LoginSession.user_id == user_id, LoginSession.revoked_at.is_(None))
        .values(revoked_at=_now(), revoked_reason=reason)
    )
    if keep is not None:
        query = query.where(LoginSession.id != keep)
    result = await session.execute(query)
    after_commit(session).invalidate(user_namespace(user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def active_session_user(
    session: AsyncSession, *, user_id: uuid.UUID, session_id: uuid.UUID
) -> User | None:
    """The user behind an access token, if both the user and its session are still live."""
    result = await session.execute(
        select(User)
        .join(LoginSession, LoginSession.user_id == User.id)
        .where(
            User.id == user_id,
            User.is_active.is_(True),
            LoginSession.id == session_id,
            LoginSession.revoked_at.is_(None),
        )
    )
    return result.scalar_one_or_none()


provide(
    Passwords,
    lambda resources: Passwords(
        time_cost=resources.settings.password_hash_time_cost,
        memory_kib=resources.settings.password_hash_memory_kib,
    ),
)
