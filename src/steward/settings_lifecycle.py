"""Settings of the account lifecycle (email, social sign-in, push), mixed into `Settings`
(steward/settings.py): the same flat environment variables, kept in a module of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode


class AccountLifecycleSettings(BaseModel):
    # Email (verification, password reset). Without SMTP_HOST, emails are logged, one line
    # each (links with their tokens only outside production).
    smtp_host: str | None = None
    smtp_port: int = Field(default=587, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    mail_from: str = "Steward <no-reply@localhost>"
    public_url: str = Field(
        default="http://127.0.0.1:8000", description="where links in emails point"
    )
    require_email_verification: bool = Field(
        default=False, description="refuse sign-in until the email address is verified"
    )
    email_verification_ttl_s: int = Field(default=2 * 86_400, ge=300)
    password_reset_ttl_s: int = Field(default=3600, ge=300, le=86_400)

    # Social sign-in: an ID token from Sign in with Apple or Google, checked against the
    # provider's keys (JWKS, cached) and these client ids (the token's `aud`).
    google_client_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    google_issuers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https://accounts.google.com", "accounts.google.com"]
    )
    google_jwks_url: str = "https://www.googleapis.com/oauth2/v3/certs"
    apple_client_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    apple_issuers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https://appleid.apple.com"]
    )
    apple_jwks_url: str = "https://appleid.apple.com/auth/keys"
    jwks_cache_s: int = Field(default=3600, ge=60, description="how long provider keys are kept")
    jwks_refetch_cooldown_s: float = Field(
        default=30.0, ge=0, description="least time between refetches for an unknown key id"
    )

    # Push: FCM for Android and web devices (a Firebase service account's JSON key file).
    fcm_service_account_file: Path | None = None
    fcm_base_url: str = "https://fcm.googleapis.com"
    # APNs for iOS devices: a token-based auth key (.p8), its key id, the team id and the app's
    # bundle id (the topic). The sandbox is https://api.sandbox.push.apple.com.
    apns_key_file: Path | None = None
    apns_key_id: str | None = None
    apns_team_id: str | None = None
    apns_topic: str | None = None
    apns_base_url: str = "https://api.push.apple.com"

    @field_validator("google_client_ids", "google_issuers", "apple_client_ids", "apple_issuers",
                     mode="before")  # fmt: skip
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value
