"""Rate limits per caller (API key, user, else client IP), per IP for sign-in and sign-up,
and the per-account sign-in lockout, as dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from steward.accounts.authentication import Principal, authenticate
from steward.accounts.lockout import Lockout
from steward.platform.deps import resources_of
from steward.platform.ratelimit import Decision, RateLimitPolicy, enforce


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


async def limit_email(connection: HTTPConnection, account: str) -> None:
    """Emails asked for one account (by address or user id): a budget of their own, so that
    nobody can flood an inbox, whoever asks."""
    resources = resources_of(connection)
    if not resources.settings.rate_limit_enabled:
        return
    decision = await resources.limiter.hit(resources.policies.email, f"email:{account}")
    _attach(connection, decision)
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
