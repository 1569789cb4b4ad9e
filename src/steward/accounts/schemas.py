"""Request and response shapes of the accounts API, one per operation."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    SecretStr,
    model_validator,
)

from steward.accounts.scopes import ALL_SCOPES, Role
from steward.platform.inputs import Instant, Text

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256


def normalise_email(value: str) -> str:
    return value.strip().lower()


def check_password_policy(password: str, email: str | None = None) -> None:
    """Raise ValueError with a message a user can act on."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if password.isdigit():
        raise ValueError("password must not be only digits")
    if password.isalpha():
        raise ValueError("password must not be only letters")
    if email is not None and password.strip().lower() == normalise_email(email):
        raise ValueError("password must not be the email address")


Email = Annotated[EmailStr, AfterValidator(normalise_email)]
Password = Annotated[SecretStr, Field(max_length=MAX_PASSWORD_LENGTH)]
DisplayName = Annotated[Text, Field(min_length=1, max_length=100)]


class UserCreate(BaseModel):
    """Sign-up. Anything else in the body (role, is_active, id...) is ignored."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"email": "ada@example.com", "password": "correct-horse-42",
         "display_name": "Ada"}]})  # fmt: skip

    email: Email
    password: Password
    display_name: DisplayName | None = None

    @model_validator(mode="after")
    def _password_policy(self) -> UserCreate:
        check_password_policy(self.password.get_secret_value(), self.email)
        return self


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    display_name: str | None
    role: Role
    is_active: bool
    email_verified: bool = Field(description="the address was confirmed by a link sent to it")
    created_at: datetime


class UserUpdate(BaseModel):
    """Own profile: display name, and a password change that needs the current password."""

    model_config = ConfigDict(extra="ignore")

    display_name: DisplayName | None = None
    current_password: Password | None = None
    new_password: Password | None = None

    @model_validator(mode="after")
    def _password_change(self) -> UserUpdate:
        if self.new_password is not None:
            if self.current_password is None:
                raise ValueError("current_password is required to set new_password")
            check_password_policy(self.new_password.get_secret_value())
        return self


class AdminUserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role | None = None
    is_active: bool | None = None


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type
    expires_in: int = Field(description="seconds until the access token expires")


AccountTokenText = Annotated[Text, Field(min_length=1, max_length=100)]


class VerifyEmail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: AccountTokenText = Field(description="the `token` of the link in the email")


class PasswordResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: Email


class IdTokenSignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_token: Annotated[Text, Field(min_length=1, max_length=8192)]
    nonce: Annotated[Text, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description="the nonce the app gave the provider (or its SHA-256)"
    )


class AccountDeletion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: Password | None = Field(
        default=None, description="needed unless the session signed in less than 5 minutes ago"
    )


class SessionRead(BaseModel):
    """A device signed in to the account."""

    id: uuid.UUID
    device_name: str | None
    platform: str | None
    ip: str | None = Field(description="the address of its last sign-in or refresh")
    created_at: datetime
    last_used_at: datetime | None
    current: bool = Field(default=False, description="the session making this request")


class SignedOut(BaseModel):
    revoked: int = Field(description="sessions signed out")


class EmailQueued(BaseModel):
    """The email is on its way (for a reset: if an account has the address; the answer does
    not say)."""

    status: Literal["queued"] = "queued"


class PasswordResetConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: AccountTokenText = Field(description="the `token` of the link in the email")
    new_password: Password

    @model_validator(mode="after")
    def _password_policy(self) -> PasswordResetConfirm:
        check_password_policy(self.new_password.get_secret_value())
        return self


class RefreshRequest(BaseModel):
    refresh_token: Annotated[Text, Field(min_length=1, max_length=512)]


ScopeName = Literal[
    "todos:read", "todos:write", "assistant", "knowledge:read", "knowledge:write",
    "profile:write", "admin",
]  # fmt: skip
assert set(ScopeName.__args__) == ALL_SCOPES  # type: ignore[attr-defined]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "nightly sync", "scopes": ["todos:read", "todos:write"]}]})  # fmt: skip

    name: Annotated[Text, Field(min_length=1, max_length=100)]
    scopes: Annotated[list[ScopeName], Field(min_length=1, max_length=len(ALL_SCOPES))]
    expires_at: Instant | None = Field(default=None, description="timezone-aware, future")


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class ApiKeyCreated(BaseModel):
    """Returned once, at creation: the only time the secret is ever shown."""

    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    expires_at: datetime | None
    secret: str
