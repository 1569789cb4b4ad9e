"""Who is calling: the principal behind a bearer token, a user API key or the service key,
and dependencies that demand a user, a scope or the admin role."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, Form, Request, Security
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer

from steward.accounts import service
from steward.accounts.models import User
from steward.accounts.scopes import ALL_SCOPES, Role, scopes_for
from steward.accounts.service import TokenPolicy
from steward.platform import security
from steward.platform.api import API_V1
from steward.platform.deps import Session, Settings
from steward.platform.errors import Forbidden, NotFound, Unauthorized
from steward.settings import Settings as _Settings

_bearer = OAuth2PasswordBearer(tokenUrl=f"{API_V1}/auth/token", auto_error=False)
_api_key = APIKeyHeader(name="x-api-key", auto_error=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `user` is None only for the static service key."""

    kind: Literal["user", "service"]
    scopes: frozenset[str]
    role: str
    user: User | None = None
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.user.id if self.user is not None else None

    @property
    def via_api_key(self) -> bool:
        return self.api_key_id is not None or self.kind == "service"


def build_token_policy(settings: _Settings) -> TokenPolicy:
    key = settings.secret_key.get_secret_value()
    return TokenPolicy(
        codec=security.TokenCodec(
            key=key,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            lifetime=timedelta(seconds=settings.access_token_ttl_s),
        ),
        refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_s),
        digest_key=key,
    )


async def token_policy(request: Request, settings: Settings) -> TokenPolicy:
    """Built once per application from its settings."""
    policy: TokenPolicy | None = getattr(request.app.state, "token_policy", None)
    if policy is None:
        policy = build_token_policy(settings)
        request.app.state.token_policy = policy
    return policy


Policy = Annotated[TokenPolicy, Depends(token_policy)]


def _bind(request: Request, principal: Principal) -> Principal:
    if principal.user_id is not None:
        request.scope.setdefault("state", {})["user_id"] = str(principal.user_id)
        structlog.contextvars.bind_contextvars(user_id=str(principal.user_id))
    return principal


async def optional_principal(
    request: Request,
    session: Session,
    settings: Settings,
    policy: Policy,
    token: Annotated[str | None, Security(_bearer)] = None,
    api_key: Annotated[str | None, Security(_api_key)] = None,
) -> Principal | None:
    """The caller, or None when no credentials were sent; bad credentials are a 401."""
    if api_key:
        service_key = settings.api_key
        if service_key is not None and hmac.compare_digest(
            api_key.encode(), service_key.get_secret_value().encode()
        ):
            return Principal(kind="service", scopes=frozenset({"admin"}), role="service")
        found = await service.resolve_api_key(session, secret=api_key, digest_key=policy.digest_key)
        if found is None:
            raise Unauthorized("API key is not valid", headers={"WWW-Authenticate": "ApiKey"})
        key, user = found
        granted = frozenset(key.scopes) & scopes_for(user.role)
        return _bind(
            request,
            Principal(kind="user", scopes=granted, role=user.role, user=user, api_key_id=key.id),
        )
    if token:
        try:
            claims = policy.codec.decode(token)
        except security.InvalidToken:
            raise Unauthorized("access token is not valid") from None
        holder = await service.active_session_user(
            session, user_id=claims.subject, session_id=claims.session_id
        )
        if holder is None:
            raise Unauthorized("access token is no longer valid")
        # A role change applies at once: the token's scopes are capped by the current role.
        return _bind(
            request,
            Principal(
                kind="user",
                scopes=claims.scopes & scopes_for(holder.role),
                role=holder.role,
                user=holder,
                session_id=claims.session_id,
            ),
        )
    return None


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]


async def current_principal(principal: OptionalPrincipal) -> Principal:
    if principal is None:
        raise Unauthorized("authentication required: send a bearer token or an x-api-key")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def requires(
    scope: str, *, user: bool = True
) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency demanding `scope` (and, unless `user=False`, a user behind the call)."""
    if scope not in ALL_SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def check(principal: CurrentPrincipal) -> Principal:
        if user and principal.user is None:
            raise Forbidden("this endpoint acts for a user; the service key has no user")
        if scope not in principal.scopes:
            raise Forbidden(f"missing scope {scope!r}")
        return principal

    return check


async def current_user(principal: CurrentPrincipal) -> User:
    if principal.user is None:
        raise Forbidden("this endpoint acts for a user; the service key has no user")
    return principal.user


async def session_user(principal: CurrentPrincipal) -> User:
    """A user signed in with a password session (not an API key)."""
    if principal.user is None or principal.session_id is None:
        raise Forbidden("this endpoint needs a signed-in user, not an API key")
    return principal.user


async def admin(principal: CurrentPrincipal) -> Principal:
    if "admin" not in principal.scopes or principal.role not in (Role.ADMIN, "service"):
        raise Forbidden("administrators only")
    return principal


CurrentUser = Annotated[User, Depends(current_user)]
SessionUser = Annotated[User, Depends(session_user)]
Admin = Annotated[Principal, Depends(admin)]


async def user_by_id(user_id: uuid.UUID, session: Session, _: Admin) -> User:
    user = await service.get(session, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


ManagedUser = Annotated[User, Depends(user_by_id)]


@dataclass(frozen=True, slots=True)
class PasswordForm:
    username: str
    password: str


async def password_form(
    username: Annotated[str, Form(max_length=320, description="the account's email")],
    password: Annotated[str, Form(max_length=256, json_schema_extra={"format": "password"})],
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
) -> PasswordForm:
    """The OAuth2 password grant's form (what /docs' Authorize button sends). FastAPI's own
    OAuth2PasswordRequestForm is a class, which FastAPI would build in its thread pool."""
    return PasswordForm(username=username, password=password)


CredentialsForm = Annotated[PasswordForm, Depends(password_form)]
