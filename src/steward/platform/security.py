"""Credentials: argon2 password hashes, signed JWT access tokens, and opaque secrets
(refresh tokens, API keys) stored only as keyed hashes."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio.to_thread
import jwt
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

ALGORITHM = "HS256"


class Passwords:
    """argon2id password hashes at the cost the settings give (a hash records its own
    cost, so hashes made at another cost still verify). Work runs in a worker thread:
    hundreds of ms of CPU must not block the loop."""

    def __init__(self, *, time_cost: int, memory_kib: int) -> None:
        hasher = Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib)
        self._hash = PasswordHash((hasher,))
        # Verifying against this when an account does not exist makes "no such user" cost
        # the same time as "wrong password": timing does not reveal who is registered.
        self._dummy = self._hash.hash("steward-timing-equaliser")

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._hash.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """True when `password` matches; with no hash (no account, or an account without a
        password: its hash starts with "!", as in /etc/shadow), the same time, and False."""

        def verify() -> bool:
            if password_hash is None or password_hash.startswith("!"):
                self._hash.verify(password, self._dummy)
                return False
            return self._hash.verify(password, password_hash)

        return await anyio.to_thread.run_sync(verify)


def new_secret(prefix: str, nbytes: int = 32) -> str:
    """A URL-safe random secret with a recognisable prefix (`stw_rt_...`, `stw_key_...`)."""
    return f"{prefix}{secrets.token_urlsafe(nbytes)}"


def secret_digest(secret: str, *, key: str) -> str:
    """HMAC-SHA256 of a high-entropy secret: fast to check, useless to a database thief
    without the server key. (Slow hashes are for low-entropy passwords only.)"""
    return hmac.new(key.encode(), secret.encode(), hashlib.sha256).hexdigest()


class InvalidToken(Exception):
    """The bearer token is malformed, tampered with, expired or not for us."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    subject: uuid.UUID
    session_id: uuid.UUID
    scopes: frozenset[str]
    role: str
    token_id: str
    expires_at: datetime


_LEEWAY_S = 10


@dataclass(frozen=True)
class TokenCodec:
    """Issues and checks access tokens with the algorithm, issuer and audience pinned.

    A client sends the same access token with every request for its whole lifetime, so a
    verified token's claims are remembered (bounded LRU) and only its expiry is re-checked:
    signature and claim validation cost ~0.1 ms each time otherwise.
    """

    key: str
    issuer: str
    audience: str
    lifetime: timedelta

    def __post_init__(self) -> None:
        object.__setattr__(self, "_verified", functools.lru_cache(maxsize=8192)(self._verify))

    def issue(
        self,
        *,
        subject: uuid.UUID,
        session_id: uuid.UUID,
        scopes: frozenset[str],
        role: str,
        now: datetime | None = None,
    ) -> tuple[str, datetime]:
        issued = now or datetime.now(UTC)
        expires = issued + self.lifetime
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": str(subject),
            "sid": str(session_id),
            "jti": uuid.uuid4().hex,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "scope": " ".join(sorted(scopes)),
            "role": role,
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM), expires

    def decode(self, token: str) -> AccessClaims:
        claims: AccessClaims = self._verified(token)  # type: ignore[attr-defined]
        if claims.expires_at.timestamp() + _LEEWAY_S <= time.time():
            raise InvalidToken("ExpiredSignatureError")
        return claims

    def _verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
                leeway=_LEEWAY_S,
            )
            return AccessClaims(
                subject=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
                scopes=frozenset(str(claims.get("scope", "")).split()),
                role=str(claims.get("role", "user")),
                token_id=str(claims["jti"]),
                expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            )
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            raise InvalidToken(type(exc).__name__) from None
