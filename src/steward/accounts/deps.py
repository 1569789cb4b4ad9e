"""Who is calling: the principal behind a bearer token, a user API key or the service key;
dependencies that demand a user, a scope or the admin role; and the rate limits that
apply to each kind of caller."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, Form, Request, Security
from fastapi.security import APIKeyHeader, OAuth2PasswordBearer
from starlette.requests import HTTPConnection

from steward.accounts import service
from steward.accounts.lockout import Lockout
from steward.accounts.models import User
from steward.accounts.scopes import ALL_SCOPES, Role, scopes_for
from steward.accounts.service import Account, TokenPolicy
from steward.platform import security
from steward.platform.api import API_V1
from steward.platform.cache import MISSING
from steward.platform.deps import Session, resources_of
from steward.platform.errors import Forbidden, NotFound, Unauthorized
from steward.platform.inputs import Text
from steward.platform.ratelimit import Decision, enforce
from steward.platform.ratelimit import Policy as RateLimitPolicy
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


Policy = Annotated[TokenPolicy, Depends(token_policy)]


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
            found = await service.resolve_api_key(session, digest=digest)
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


OptionalPrincipal = Annotated[Principal | None, Depends(optional_principal)]


def _authenticated(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthorized("authentication required: send a bearer token or an x-api-key")
    return principal


async def current_principal(principal: OptionalPrincipal) -> Principal:
    return _authenticated(principal)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def requires(
    scope: str, *, user: bool = True
) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency demanding `scope` (and, unless `user=False`, a user behind the call)."""
    if scope not in ALL_SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def check(caller: OptionalPrincipal) -> Principal:
        principal = _authenticated(caller)
        if user and principal.user is None:
            raise Forbidden("this endpoint acts for a user; the service key has no user")
        if scope not in principal.scopes:
            raise Forbidden(f"missing scope {scope!r}")
        return principal

    return check


async def current_user(caller: OptionalPrincipal) -> Account:
    principal = _authenticated(caller)
    if principal.user is None:
        raise Forbidden("this endpoint acts for a user; the service key has no user")
    return principal.user


async def session_user(principal: CurrentPrincipal) -> Account:
    """A user signed in with a password session (not an API key)."""
    if principal.user is None or principal.session_id is None:
        raise Forbidden("this endpoint needs a signed-in user, not an API key")
    return principal.user


async def admin(principal: CurrentPrincipal) -> Principal:
    if "admin" not in principal.scopes or principal.role not in (Role.ADMIN, "service"):
        raise Forbidden("administrators only")
    return principal


async def profile_writer(principal: CurrentPrincipal) -> Account:
    """A user changing their own account's settings: signed in, or an API key that was
    given `profile:write` (a key made for reading todos must not rename or re-hook the
    account)."""
    if principal.user is None:
        raise Forbidden("this endpoint acts for a user; the service key has no user")
    if principal.session_id is None and "profile:write" not in principal.scopes:
        raise Forbidden("missing scope 'profile:write' (or sign in)")
    return principal.user


CurrentUser = Annotated[Account, Depends(current_user)]
SessionUser = Annotated[Account, Depends(session_user)]
ProfileWriter = Annotated[Account, Depends(profile_writer)]
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
    username: Annotated[Text, Form(max_length=320, description="the account's email")],
    password: Annotated[Text, Form(max_length=256, json_schema_extra={"format": "password"})],
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
) -> PasswordForm:
    """The OAuth2 password grant's form (what /docs' Authorize button sends). FastAPI's own
    OAuth2PasswordRequestForm is a class, which FastAPI would build in its thread pool."""
    return PasswordForm(username=username, password=password)


CredentialsForm = Annotated[PasswordForm, Depends(password_form)]


# --- rate limits ---------------------------------------------------------------------------


def _attach(request: HTTPConnection, decision: Decision) -> None:
    if decision.checked:
        request.scope.setdefault("state", {})["response_headers"] = decision.headers()


def limit_key(connection: HTTPConnection, principal: Principal | None) -> str:
    """Whose budget a call spends: its API key's, its user's, else its client IP's."""
    if principal is None:
        return f"ip:{connection.scope.get('state', {}).get('client_ip')}"
    if principal.api_key_id is not None:
        return f"key:{principal.api_key_id}"
    if principal.user_id is not None:
        return f"user:{principal.user_id}"
    return "service"


async def limit(
    connection: HTTPConnection, policy: RateLimitPolicy, principal: Principal | None
) -> None:
    """Count one call against `policy` for its caller; a 429 problem when over."""
    resources = resources_of(connection)
    if not resources.settings.rate_limit_enabled:
        return
    decision = await resources.limiter.hit(policy, limit_key(connection, principal))
    _attach(connection, decision)
    enforce(decision)


async def limit_requests(request: Request) -> None:
    """The general limit: per user or API key when authenticated, else per client IP."""
    principal = await authenticate(request)
    policies = resources_of(request).policies
    await limit(request, policies.anonymous if principal is None else policies.authenticated,
                principal)  # fmt: skip


async def _limit_per_ip(request: Request, policy: RateLimitPolicy) -> None:
    resources = resources_of(request)
    if not resources.settings.rate_limit_enabled:
        return
    ip = request.scope.get("state", {}).get("client_ip")
    decision = await resources.limiter.hit(policy, f"ip:{ip}")
    _attach(request, decision)
    enforce(decision)


async def limit_login(request: Request) -> None:
    """Sign-in attempts per client IP (the per-account guard is the lockout)."""
    await _limit_per_ip(request, resources_of(request).policies.login)


async def limit_register(request: Request) -> None:
    """Sign-ups per client IP, a budget of their own."""
    await _limit_per_ip(request, resources_of(request).policies.register)


def lockout_of(connection: HTTPConnection) -> Lockout:
    """Built once per application from its settings."""
    lockout: Lockout | None = getattr(connection.app.state, "lockout", None)
    if lockout is None:
        resources = resources_of(connection)
        settings = resources.settings
        lockout = Lockout(
            resources.request_redis,
            threshold=settings.login_lockout_failures,
            base_s=settings.login_lockout_base_s,
            max_s=settings.login_lockout_max_s,
            fail_open=settings.rate_limit_login_fail_open,
        )
        connection.app.state.lockout = lockout
    return lockout


async def _lockout(request: Request) -> Lockout:
    return lockout_of(request)


SignInLockout = Annotated[Lockout, Depends(_lockout)]


RateLimited = Depends(limit_requests)
