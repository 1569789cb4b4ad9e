"""Who is calling: the principal behind a bearer token, a user API key or the service key,
resolved once per request (and cached across requests until the account changes)."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from steward.accounts import api_keys, service
from steward.accounts.scopes import scopes_for
from steward.accounts.service import Account, TokenPolicy
from steward.platform import security
from steward.platform.api import API_V1
from steward.platform.cache import MISSING
from steward.platform.deps import resources_of
from steward.platform.errors import Unauthorized
from steward.settings import Settings as _Settings

_bearer = OAuth2PasswordBearer(tokenUrl=f"{API_V1}/auth/token", auto_error=False)
_api_key = APIKeyHeader(name="x-api-key", auto_error=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. `user` is None only for the static service key."""

    kind: Literal["user", "service"]
    scopes: frozenset[str]
    role: str
    user: Account | None = None
    session_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None

    @property
    def user_id(self) -> uuid.UUID | None:
        return self.user.id if self.user is not None else None


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


def policy_of(connection: HTTPConnection) -> TokenPolicy:
    """Built once per application from its settings."""
    policy: TokenPolicy | None = getattr(connection.app.state, "token_policy", None)
    if policy is None:
        policy = build_token_policy(resources_of(connection).settings)
        connection.app.state.token_policy = policy
    return policy


async def token_policy(request: Request) -> TokenPolicy:
    return policy_of(request)


Tokens = Annotated[TokenPolicy, Depends(token_policy)]


def _bind(request: HTTPConnection, principal: Principal) -> Principal:
    if principal.user_id is not None:
        request.scope.setdefault("state", {})["user_id"] = str(principal.user_id)
        structlog.contextvars.bind_contextvars(user_id=str(principal.user_id))
    return principal


async def _from_bearer(request: HTTPConnection, policy: TokenPolicy, token: str) -> Principal:
    try:
        claims = policy.codec.decode(token)
    except security.InvalidToken:
        raise Unauthorized("access token is not valid") from None
    resources = resources_of(request)

    async def load() -> Any:
        async with resources.transaction() as session:
            holder = await service.active_session_user(
                session, user_id=claims.subject, session_id=claims.session_id
            )
            return MISSING if holder is None else Account.of(holder).to_json()

    # Cached per (user, session); any change to the user or a revocation of its sessions
    # moves the user's namespace to a new version, so the next request sees it at once.
    cached = await resources.cache.get_or_compute(
        service.user_namespace(claims.subject),
        f"session:{claims.session_id}",
        load,
        ttl_s=resources.settings.cache_ttl_s,
        kind="principal",
    )
    if cached is MISSING:
        raise Unauthorized("access token is no longer valid")
    account = Account.from_json(cached)
    # A role change applies at once: the token's scopes are capped by the current role.
    return _bind(
        request,
        Principal(
            kind="user",
            scopes=claims.scopes & scopes_for(account.role),
            role=account.role,
            user=account,
            session_id=claims.session_id,
        ),
    )


async def _from_api_key(request: HTTPConnection, policy: TokenPolicy, secret: str) -> Principal:
    resources = resources_of(request)
    digest = security.secret_digest(secret, key=policy.digest_key)

    async def load_key() -> Any:
        async with resources.transaction() as session:
            found = await api_keys.resolve_api_key(session, digest=digest)
        if found is None:
            return MISSING
        key, _ = found
        return {
            "key_id": str(key.id),
            "user_id": str(key.user_id),
            "scopes": key.scopes,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        }

    # Unknown secrets are cached as misses for a few seconds, so guessing keys costs Redis
    # lookups, not database queries.
    cached = await resources.cache.get_or_compute(
        service.api_key_namespace(digest),
        "key",
        load_key,
        ttl_s=resources.settings.cache_ttl_s,
        kind="api_key",
    )
    invalid = Unauthorized("API key is not valid", headers={"WWW-Authenticate": "ApiKey"})
    if cached is MISSING or (
        cached["expires_at"] is not None
        and datetime.fromisoformat(cached["expires_at"]) <= datetime.now(UTC)
    ):
        raise invalid
    user_id = uuid.UUID(cached["user_id"])

    async def load_user() -> Any:
        async with resources.transaction() as session:
            user = await service.get(session, user_id)
            return MISSING if user is None or not user.is_active else Account.of(user).to_json()

    # The owner is read through its own namespace: disabling the user invalidates it even
    # though the key's entry is still cached.
    profile = await resources.cache.get_or_compute(
        service.user_namespace(user_id),
        "profile",
        load_user,
        ttl_s=resources.settings.cache_ttl_s,
        kind="principal",
    )
    if profile is MISSING:
        raise invalid
    account = Account.from_json(profile)
    return _bind(
        request,
        Principal(
            kind="user",
            scopes=frozenset(cached["scopes"]) & scopes_for(account.role),
            role=account.role,
            user=account,
            api_key_id=uuid.UUID(cached["key_id"]),
        ),
    )


async def optional_principal(
    request: Request,
    token: Annotated[str | None, Security(_bearer)] = None,
    api_key: Annotated[str | None, Security(_api_key)] = None,
) -> Principal | None:
    """The caller, or None when no credentials were sent; bad credentials are a 401.

    Every authenticated call resolves this, so it is kept flat: settings and the token
    policy come from the app, and a database session is opened only when the principal is
    not cached (each dependency FastAPI resolves costs about 10 us; a session dependency
    several times that). The result is kept on the request for `authenticate()`."""
    return await authenticate(request, (token, api_key))


def credentials(connection: HTTPConnection) -> tuple[str | None, str | None]:
    """The bearer token and API key a connection sent, read as the security schemes do.
    A WebSocket may pass its token as `access_token` (a browser's cannot send headers)."""
    scheme, _, param = connection.headers.get("authorization", "").partition(" ")
    token = param.strip() if scheme.lower() == "bearer" else None
    if not token and connection.scope["type"] == "websocket":
        token = connection.query_params.get("access_token")
    return token or None, connection.headers.get("x-api-key") or None


# Kept in the request's own scope, not its `state`: servers may share one state dict
# (lifespan state) between requests.
_PRINCIPAL = "steward.principal"


async def authenticate(
    connection: HTTPConnection, sent: tuple[str | None, str | None] | None = None
) -> Principal | None:
    """The caller of this request, resolved once per request whoever asks first (`sent`:
    the credentials, when already read): for code that needs it without declaring the
    dependency (the router-wide rate limit), where the dependency would cost FastAPI
    another resolution of its whole sub-tree."""
    scope = connection.scope
    if _PRINCIPAL not in scope:
        token, api_key = sent or credentials(connection)
        scope[_PRINCIPAL] = await resolve_principal(connection, token, api_key)
    principal: Principal | None = scope[_PRINCIPAL]
    return principal


async def resolve_principal(
    connection: HTTPConnection, token: str | None, api_key: str | None
) -> Principal | None:
    policy = policy_of(connection)
    if api_key:
        service_key = resources_of(connection).settings.api_key
        if service_key is not None and hmac.compare_digest(
            api_key.encode(), service_key.get_secret_value().encode()
        ):
            return Principal(kind="service", scopes=frozenset({"admin"}), role="service")
        return await _from_api_key(connection, policy, api_key)
    if token:
        return await _from_bearer(connection, policy, token)
    return None
