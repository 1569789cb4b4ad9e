"""HTTP endpoints of the accounts domain: auth, own profile, API keys, admin."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response, status

from steward.accounts import api_keys as key_service
from steward.accounts import erasure, hooks, service, sessions, social
from steward.accounts.authentication import Tokens
from steward.accounts.deps import (
    Admin,
    CredentialsForm,
    CurrentPrincipal,
    CurrentUser,
    ManagedUser,
    PasswordHashing,
    ProfileWriter,
    SessionUser,
)
from steward.accounts.limits import RateLimited, SignInLockout, limit_login, limit_register
from steward.accounts.models import User
from steward.accounts.schemas import (
    AccountDeletion,
    AdminUserUpdate,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyRead,
    IdTokenSignIn,
    RefreshRequest,
    SessionRead,
    SignedOut,
    TokenPair,
    UserCreate,
    UserRead,
    UserUpdate,
)
from steward.accounts.sessions import SignInDevice
from steward.platform.api import API_V1
from steward.platform.deps import AppSettings, Session, resources_of
from steward.platform.errors import Conflict, EmailNotVerified, Forbidden, Unauthorized
from steward.platform.pagination import Cursor, Limit, Page

auth = APIRouter(prefix=f"{API_V1}/auth", tags=["auth"])
users = APIRouter(prefix=f"{API_V1}/users", tags=["users"], dependencies=[RateLimited])
api_keys = APIRouter(prefix=f"{API_V1}/api-keys", tags=["api-keys"], dependencies=[RateLimited])
admin = APIRouter(prefix=f"{API_V1}/admin", tags=["admin"], dependencies=[RateLimited])

_401: dict[int | str, dict[str, Any]] = {401: {"description": "missing or invalid credentials"}}
_403: dict[int | str, dict[str, Any]] = {403: {"description": "authenticated, but not allowed"}}


@auth.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    summary="Create an account (anyone)",
    dependencies=[Depends(limit_register)],
    responses={409: {"description": "email already registered"}},
)
async def register(
    user_in: UserCreate, session: Session, passwords: PasswordHashing, settings: AppSettings
) -> UserRead:
    user = await service.create(session, user_in=user_in, passwords=passwords)
    await hooks.user_created(session, user, settings)
    return UserRead.model_validate(user)


async def _sign_in_device(
    request: Request,
    x_device_name: Annotated[str | None, Header(max_length=200)] = None,
    x_device_platform: Annotated[str | None, Header(max_length=32)] = None,
) -> SignInDevice:
    """The device a sign-in comes from, as the app names it, and the client's address."""
    return SignInDevice.from_headers(x_device_name, x_device_platform, _client_ip(request))


SignInFrom = Annotated[SignInDevice, Depends(_sign_in_device)]


@auth.post(
    "/token",
    summary="Sign in with email and password (anyone); `X-Device-Name` and "
    "`X-Device-Platform` (ios, android, web, desktop) name the session",
    responses={**_401, 403: {"description": "the email address is not verified yet "
                                            "(REQUIRE_EMAIL_VERIFICATION)"}},
    dependencies=[Depends(limit_login)],
)  # fmt: skip
async def token(
    form: CredentialsForm,
    session: Session,
    policy: Tokens,
    lockout: SignInLockout,
    passwords: PasswordHashing,
    settings: AppSettings,
    device: SignInFrom,
) -> TokenPair:
    user = await service.authenticate(
        session, email=form.username, password=form.password, passwords=passwords,
        lockout=lockout,
    )  # fmt: skip
    if settings.require_email_verification and not user.email_verified:
        raise EmailNotVerified("confirm your email address first: open the link we sent")
    return await service.login(session, user=user, policy=policy, device=device)


@auth.post(
    "/oauth/{provider}",
    summary="Sign in with an Apple or Google ID token; answers Steward's own tokens (anyone)",
    dependencies=[Depends(limit_login)],
    responses={401: {"description": "the ID token is not valid (signature, issuer, audience, "
                                    "expiry or nonce)"},
               409: {"description": "an account has this address but has not verified it"},
               422: {"description": "this provider is not configured, or no email was shared"}},
)  # fmt: skip
async def oauth_sign_in(
    provider: social.ProviderName,
    body: IdTokenSignIn,
    request: Request,
    session: Session,
    policy: Tokens,
    device: SignInFrom,
) -> TokenPair:
    id_tokens = resources_of(request).get(social.IdTokens)
    identity = await id_tokens.verify(provider, body.id_token, body.nonce)
    user = await social.account_for(session, identity)
    return await service.login(session, user=user, policy=policy, device=device)


def _client_ip(request: Request) -> str | None:
    ip = request.scope.get("state", {}).get("client_ip")
    return ip if isinstance(ip, str) else None


@auth.post(
    "/refresh",
    summary="Rotate a refresh token (holder of the refresh token)",
    dependencies=[RateLimited],
    responses=_401,
)
async def refresh(
    body: RefreshRequest, request: Request, session: Session, policy: Tokens
) -> TokenPair:
    return await service.refresh(session, token=body.refresh_token, policy=policy,
                                 ip=_client_ip(request))  # fmt: skip


@auth.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke the session of a refresh token (holder of the refresh token)",
    dependencies=[RateLimited],
    responses={401: {"description": "a bearer token was sent and is not valid (none is needed)"}},
)
async def logout(body: RefreshRequest, session: Session, policy: Tokens) -> Response:
    await service.logout(session, token=body.refresh_token, policy=policy)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users.get("/me", summary="Own profile (any user)", responses=_401, response_model=UserRead)
async def read_me(user: CurrentUser) -> Response:
    # Serialised here: returning the model would have FastAPI validate it a second time on
    # one of the hottest routes.
    body = UserRead.model_validate(user, from_attributes=True).model_dump_json()
    return Response(body, media_type="application/json")


@users.get("/me/sessions", summary="Own sign-in sessions, one per device (signed-in user)",
           responses={**_401, **_403})  # fmt: skip
async def list_sessions(
    user: SessionUser, principal: CurrentPrincipal, session: Session
) -> list[SessionRead]:
    return [
        SessionRead.model_validate(login, from_attributes=True).model_copy(
            update={"current": login.id == principal.session_id}
        )
        for login in await sessions.active(session, user_id=user.id)
    ]


@users.delete(
    "/me/sessions",
    summary="Sign out every other device, keeping this one (signed-in user)",
    responses={**_401, **_403},
)
async def sign_out_others(
    user: SessionUser, principal: CurrentPrincipal, session: Session
) -> SignedOut:
    assert principal.session_id is not None  # SessionUser: a password session
    revoked = await sessions.sign_out_others(session, user_id=user.id, keep=principal.session_id)
    return SignedOut(revoked=revoked)


@users.delete(
    "/me/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign another device out (signed-in user; this one signs out with /auth/logout)",
    responses={**_401, **_403, 404: {"description": "no such live session of yours"},
               409: {"description": "the session making the request"}},
)  # fmt: skip
async def sign_out_one(
    session_id: uuid.UUID, user: SessionUser, principal: CurrentPrincipal, session: Session
) -> Response:
    if session_id == principal.session_id:
        raise Conflict("this is the session making the request: sign out with /auth/logout")
    await sessions.sign_out(session, user_id=user.id, session_id=session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users.get(
    "/me/export",
    summary="Everything the account holds, as JSON (signed-in user)",
    responses={**_401, **_403},
)
async def export_me(user: SessionUser, session: Session) -> dict[str, Any]:
    return await erasure.export(session, user_id=user.id)


@users.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete the account and everything it owns (signed-in user, with the password or "
    "a sign-in less than five minutes old)",
    responses={**_401, 403: {"description": "an API key, or no proof: the password is wrong "
                                            "and the sign-in is not fresh"}},
)  # fmt: skip
async def delete_me(
    user: SessionUser, principal: CurrentPrincipal, session: Session, passwords: PasswordHashing,
    request: Request, body: AccountDeletion | None = None,
) -> Response:  # fmt: skip
    assert principal.session_id is not None  # SessionUser: a password session
    password = body.password.get_secret_value() if body and body.password else None
    await erasure.delete_account(
        session, user_id=user.id, session_id=principal.session_id, password=password,
        passwords=passwords, resources=resources_of(request),
    )  # fmt: skip
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@users.patch(
    "/me",
    summary="Change own display name or password (signed-in user, or scope profile:write)",
    responses={**_401, **_403},
)
async def update_me(
    change: UserUpdate,
    principal: CurrentPrincipal,
    user: ProfileWriter,
    session: Session,
    passwords: PasswordHashing,
) -> UserRead:
    if change.new_password is not None and principal.session_id is None:
        raise Forbidden("changing the password needs a signed-in session, not an API key")
    stored = await service.get(session, user.id)
    if stored is None:
        raise Unauthorized("account no longer exists")
    updated = await service.update_me(
        session, user=stored, change=change, current_session=principal.session_id,
        passwords=passwords,
    )  # fmt: skip
    return UserRead.model_validate(updated)


@api_keys.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create an API key; the secret is shown once (signed-in user)",
    responses={**_401, **_403},
)
async def create_api_key(
    key_in: ApiKeyCreate,
    user: SessionUser,
    principal: CurrentPrincipal,
    session: Session,
    policy: Tokens,
) -> ApiKeyCreated:
    return await key_service.create_api_key(
        session,
        user_id=user.id,
        key_in=key_in,
        allowed_scopes=principal.scopes,
        digest_key=policy.digest_key,
    )


@api_keys.get("", summary="List own API keys (any user)", responses=_401)
async def list_api_keys(user: CurrentUser, session: Session) -> Page[ApiKeyRead]:
    keys = await key_service.list_api_keys(session, user_id=user.id)
    return Page(items=[ApiKeyRead.model_validate(k) for k in keys], next_cursor=None)


@api_keys.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke an own API key (signed-in user)",
    responses={**_401, 404: {"description": "no such key of yours"}},
)
async def revoke_api_key(key_id: uuid.UUID, user: SessionUser, session: Session) -> Response:
    key = await key_service.get_api_key(session, user_id=user.id, key_id=key_id)
    await key_service.revoke_api_key(session, key=key)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@admin.get("/users", summary="List users (admin)", responses={**_401, **_403})
async def list_users(
    _: Admin, session: Session, limit: Limit = 50, cursor: Cursor = None
) -> Page[UserRead]:
    found, next_cursor = await service.list_users(session, limit=limit, cursor=cursor)
    return Page(items=[UserRead.model_validate(u) for u in found], next_cursor=next_cursor)


@admin.patch(
    "/users/{user_id}",
    summary="Change a user's role or active flag (admin)",
    responses={
        **_401,
        **_403,
        404: {"description": "no such user"},
        409: {"description": "administrators cannot change their own role or status"},
    },
)
async def update_user(
    change: AdminUserUpdate, user: ManagedUser, principal: Admin, session: Session
) -> UserRead:
    updated: User = await service.admin_update(
        session, user=user, change=change, admin_id=principal.user_id
    )
    return UserRead.model_validate(updated)


routers = (auth, users, api_keys, admin)
