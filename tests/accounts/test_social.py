"""Sign in with Apple and Google against an issuer this test runs: it serves its keys (JWKS)
over HTTP and signs ID tokens, as the providers do. A valid token signs in (creating the
account, or linking one whose verified address matches); every forged, stale, misdirected
or replayed one is refused; a key rotation needs nothing from Steward."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from steward.app import create_app
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import PASSWORD, login, make_account
from tests.live import free_port

CLIENT_ID = "app.steward.test"


class Issuer:
    """An OpenID provider's two public faces: its JWKS and the tokens it signs."""

    def __init__(self) -> None:
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.published: list[str] = []
        self.rotate()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks = {"keys": [
                    {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(
                        issuer.keys[kid].public_key())), "kid": kid, "alg": "RS256", "use": "sig"}
                    for kid in issuer.published
                ]}  # fmt: skip
                body = json.dumps(jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def rotate(self) -> str:
        """A new signing key, published alone (the old one is withdrawn)."""
        kid = uuid.uuid4().hex[:8]
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.published = [kid]
        return kid

    def token(self, *, kid: str | None = None, key: rsa.RSAPrivateKey | None = None,
              **claims: Any) -> str:  # fmt: skip
        kid = kid or self.published[-1]
        now = int(time.time())
        body = {"iss": self.url, "aud": CLIENT_ID, "sub": "user-1", "iat": now, "exp": now + 600,
                "email": "sam@example.com", "email_verified": True, **claims}  # fmt: skip
        return jwt.encode(body, key or self.keys[kid], algorithm="RS256", headers={"kid": kid})


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    served = Issuer()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()


@pytest.fixture
async def client(engines: EngineSet, issuer: Issuer, clean_state: None) -> Any:
    settings = make_settings(
        engines, google_client_ids=CLIENT_ID, google_issuers=issuer.url,
        google_jwks_url=f"{issuer.url}/keys", jwks_refetch_cooldown_s=0,
    )  # fmt: skip
    async with app_client(create_app(settings)) as http:
        yield http


async def _google(client: httpx.AsyncClient, token: str, **extra: Any) -> httpx.Response:
    device = {"X-Device-Name": "Pixel", "X-Device-Platform": "android"}
    return await client.post("/api/v1/auth/oauth/google", json={"id_token": token, **extra},
                             headers=device)  # fmt: skip


async def test_a_valid_token_creates_then_signs_in_the_same_account(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    sub = uuid.uuid4().hex
    email = f"sam-{sub[:6]}@example.com"
    first = await _google(client, issuer.token(sub=sub, email=email))
    assert first.status_code == 200, first.text
    headers = {"Authorization": f"Bearer {first.json()['access_token']}"}
    me = (await client.get("/api/v1/users/me", headers=headers)).json()
    assert (me["email"], me["email_verified"]) == (email, True)
    again = await _google(client, issuer.token(sub=sub, email=email))
    headers2 = {"Authorization": f"Bearer {again.json()['access_token']}"}
    assert (await client.get("/api/v1/users/me", headers=headers2)).json()["id"] == me["id"]
    devices = (await client.get("/api/v1/users/me/sessions", headers=headers2)).json()
    assert {d["device_name"] for d in devices} == {"Pixel"} and len(devices) == 2
    # No password was ever set: a password sign-in is refused like any wrong one.
    form = {"username": email, "password": "!anything-at-all"}
    refused = await client.post("/api/v1/auth/token", data=form)
    assert refused.status_code == 401


@pytest.mark.parametrize(
    "forgery",
    ["wrong audience", "wrong issuer", "expired", "unknown key", "tampered", "nonce"],
)
async def test_forged_stale_or_misdirected_tokens_are_refused(
    client: httpx.AsyncClient, issuer: Issuer, forgery: str
) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    extra: dict[str, Any] = {}
    token = {
        "wrong audience": lambda: issuer.token(aud="someone-else"),
        "wrong issuer": lambda: issuer.token(iss="https://evil.example"),
        "expired": lambda: issuer.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "unknown key": lambda: issuer.token(key=stranger),
        "tampered": lambda: issuer.token()[:-6] + "AAAAAA",
        "nonce": lambda: issuer.token(nonce="n-1"),
    }[forgery]()
    if forgery == "nonce":
        extra = {"nonce": "n-2"}
    refused = await _google(client, token, **extra)
    assert refused.status_code == 401, refused.text
    assert refused.json()["type"].endswith("/invalid-id-token")


async def test_a_nonce_matches_as_sent_or_hashed(client: httpx.AsyncClient, issuer: Issuer) -> None:
    plain = await _google(client, issuer.token(sub="n1", email="n1@example.com", nonce="abc"),
                          nonce="abc")  # fmt: skip
    assert plain.status_code == 200, plain.text
    hashed = hashlib.sha256(b"xyz").hexdigest()
    apple_style = await _google(client, issuer.token(sub="n2", email="n2@example.com",
                                                     nonce=hashed), nonce="xyz")  # fmt: skip
    assert apple_style.status_code == 200, apple_style.text


async def test_a_verified_address_links_and_an_unverified_one_is_not_taken_over(
    client: httpx.AsyncClient, issuer: Issuer, engines: EngineSet
) -> None:
    unverified = await make_account(client)
    taken = await _google(client, issuer.token(sub="u-1", email=unverified.email))
    assert taken.status_code == 409
    # Verify alice's address (as the emailed link would), then sign in with Google.
    from sqlalchemy import text

    from steward.platform.db import create_engine as _engine

    alice = await make_account(client)
    engine = _engine(make_settings(engines))
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE users SET email_verified_at = now() WHERE email = :e"),
                           {"e": alice.email})  # fmt: skip
    await engine.dispose()
    linked = await _google(client, issuer.token(sub="a-1", email=alice.email))
    assert linked.status_code == 200, linked.text
    headers = {"Authorization": f"Bearer {linked.json()['access_token']}"}
    assert (await client.get("/api/v1/users/me", headers=headers)).json()["id"] == alice.id
    assert (await login(client, alice.email, PASSWORD))["access_token"]  # the password too


async def test_a_key_rotation_is_followed(client: httpx.AsyncClient, issuer: Issuer) -> None:
    before = await _google(client, issuer.token(sub="r-1", email="r1@example.com"))
    assert before.status_code == 200
    issuer.rotate()
    after = await _google(client, issuer.token(sub="r-1", email="r1@example.com"))
    assert after.status_code == 200, after.text


async def test_a_provider_without_client_ids_is_refused(
    client: httpx.AsyncClient, issuer: Issuer
) -> None:
    apple = await client.post("/api/v1/auth/oauth/apple", json={"id_token": issuer.token()})
    assert apple.status_code == 422
    unknown = await client.post("/api/v1/auth/oauth/facebook", json={"id_token": "x"})
    assert unknown.status_code == 422
