"""Dependencies that say who may call an endpoint: a principal, a user, a scope, the admin
role, a password session; and the sign-in form. Who the caller is comes from
`authentication.py`; how often they may call, from `limits.py`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Form, Request

from steward.accounts import service
from steward.accounts.authentication import Principal, optional_principal
from steward.accounts.models import User
from steward.accounts.scopes import ALL_SCOPES, Role
from steward.accounts.service import Account
from steward.platform.deps import Session, resources_of
from steward.platform.errors import Forbidden, NotFound, Unauthorized
from steward.platform.inputs import Text
from steward.platform.security import Passwords

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


async def current_user_id(caller: OptionalPrincipal) -> uuid.UUID:
    """The id of the user behind the call (the owner of what it reads and writes): a 401
    without credentials, a 403 for the service key. Scopes are the endpoint's own
    dependency (`requires`)."""
    principal = _authenticated(caller)
    if principal.user is None:
        raise Forbidden("this endpoint acts for a user; the service key has no user")
    return principal.user.id


CurrentUser = Annotated[Account, Depends(current_user)]
CurrentUserId = Annotated[uuid.UUID, Depends(current_user_id)]
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


async def password_hashing(request: Request) -> Passwords:
    return resources_of(request).get(Passwords)


PasswordHashing = Annotated[Passwords, Depends(password_hashing)]
