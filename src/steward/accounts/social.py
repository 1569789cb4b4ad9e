"""Sign in with Apple and Google: the app gets an ID token from the provider's SDK and posts
it; Steward checks it and answers with its own tokens.

The check: the signature against the provider's published keys (JWKS, fetched with PyJWT's
client and cached; a token signed with a key not yet seen refetches them, so a rotation
needs nothing from us), `iss` among the provider's issuers, `aud` among this deployment's
client ids, `exp`/`iat`, and `nonce` when the app sent one (Apple apps usually put the
SHA-256 of their nonce in the request; either form matches).

The account: the identity (provider, `sub`) if it is already linked; else an account with
the token's address if both sides have verified it (the provider says `email_verified`, and
the account's own address is verified), which gets linked; else a new account, verified if
the provider says so. An existing account whose address is not verified is not taken over:
its owner signs in with the password first."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio.to_thread
import jwt
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts.models import SocialIdentity, User
from steward.accounts.service import get_by_email
from steward.platform import security
from steward.platform.errors import Conflict, Unauthorized, UnprocessableContent
from steward.platform.resources import provide
from steward.settings import Settings

log = structlog.get_logger(__name__)

ProviderName = Literal["apple", "google"]


class InvalidIdToken(Unauthorized):
    slug = "invalid-id-token"


@dataclass(frozen=True, slots=True)
class Identity:
    provider: ProviderName
    subject: str
    email: str | None
    email_verified: bool


class IdTokens:
    """The providers' key sets (one cached JWKS client each) and how to check a token."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

        def client(url: str) -> jwt.PyJWKClient:
            cooldown = settings.jwks_refetch_cooldown_s
            return jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=settings.jwks_cache_s,
                                   timeout=5, cooldown_duration=cooldown)  # fmt: skip

        self._clients = {"google": client(settings.google_jwks_url),
                         "apple": client(settings.apple_jwks_url)}  # fmt: skip

    def _audiences(self, provider: ProviderName) -> list[str]:
        s = self._settings
        return s.google_client_ids if provider == "google" else s.apple_client_ids

    def _issuers(self, provider: ProviderName) -> list[str]:
        s = self._settings
        return s.google_issuers if provider == "google" else s.apple_issuers

    async def verify(self, provider: ProviderName, token: str, nonce: str | None) -> Identity:
        audiences = self._audiences(provider)
        if not audiences:
            raise UnprocessableContent(f"sign-in with {provider} is not configured here")
        try:
            # PyJWKClient fetches over blocking HTTP (when its cache misses): off the loop.
            key = await anyio.to_thread.run_sync(
                self._clients[provider].get_signing_key_from_jwt, token
            )
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=["RS256", "ES256"], audience=audiences,
                issuer=self._issuers(provider), options={"require": ["exp", "iat", "sub"]},
                leeway=30,
            )  # fmt: skip
        except jwt.PyJWKClientConnectionError:
            log.warning("social.jwks_unreachable", provider=provider)
            raise InvalidIdToken(f"{provider}'s keys could not be fetched; try again") from None
        except jwt.PyJWTError as exc:
            raise InvalidIdToken(f"the {provider} ID token is not valid: {exc}") from None
        if nonce is not None and not _nonce_matches(claims.get("nonce"), nonce):
            raise InvalidIdToken(f"the {provider} ID token was not issued for this nonce")
        email = claims.get("email")
        verified = claims.get("email_verified") in (True, "true")
        address = email.strip().lower() if isinstance(email, str) else None
        return Identity(provider, str(claims["sub"]), address, verified)


def _nonce_matches(claimed: object, nonce: str) -> bool:
    if not isinstance(claimed, str):
        return False
    hashed = hashlib.sha256(nonce.encode()).hexdigest()
    return hmac.compare_digest(claimed, nonce) or hmac.compare_digest(claimed, hashed)


provide(IdTokens, lambda resources: IdTokens(resources.settings))


async def account_for(session: AsyncSession, identity: Identity) -> User:
    """The account this identity signs in to: linked, matched by verified address, or new."""
    linked = (
        await session.execute(
            select(User)
            .join(SocialIdentity, SocialIdentity.user_id == User.id)
            .where(
                SocialIdentity.provider == identity.provider,
                SocialIdentity.subject == identity.subject,
            )
        )
    ).scalar_one_or_none()
    if linked is not None:
        if not linked.is_active:
            raise InvalidIdToken("this account is disabled")
        return linked
    user = await get_by_email(session, identity.email) if identity.email else None
    if user is not None:
        if not (identity.email_verified and user.email_verified and user.is_active):
            raise Conflict(
                "an account with this email address exists: sign in with its password, "
                "verify the address, then use this provider"
            )
    else:
        if identity.email is None:
            raise UnprocessableContent("the provider shared no email address for a new account")
        # No password: this account signs in with the provider (or after a password reset).
        verified_at = datetime.now(UTC) if identity.email_verified else None
        user = User(email=identity.email, password_hash="!" + security.new_secret("none"),
                    role="user", is_active=True, email_verified_at=verified_at)  # fmt: skip
        session.add(user)
        await session.flush()
        log.info("user.created", user_id=str(user.id), via=identity.provider)
    session.add(SocialIdentity(id=uuid.uuid4(), user_id=user.id, provider=identity.provider,
                               subject=identity.subject, email=identity.email))  # fmt: skip
    await session.flush()
    log.info("social.linked", user_id=str(user.id), provider=identity.provider)
    return user
