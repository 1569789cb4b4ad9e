"""Factories for test data, built through the public API like a client would."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx

PASSWORD = "correct-horse-42"
_counter = itertools.count(1)


@dataclass
class Account:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/auth/token", data={"username": email, "password": password}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def make_account(
    client: httpx.AsyncClient, *, email: str | None = None, password: str = PASSWORD
) -> Account:
    email = email or f"user{next(_counter)}@example.com"
    response = await client.post(
        "/api/v1/auth/register", json={"email": email, "password": password}
    )
    assert response.status_code == 201, response.text
    tokens = await login(client, email, password)
    return Account(
        id=response.json()["id"],
        email=email,
        password=password,
        access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"],
    )


async def make_admin(client: httpx.AsyncClient, app: Any) -> Account:
    """An account promoted to admin directly in the database (as `steward user create
    --admin` does), then signed in again so its token carries the admin scope."""
    from sqlalchemy import update

    from steward.accounts.models import User

    account = await make_account(client)
    async with app.state.resources.sessionmaker.begin() as session:
        await session.execute(update(User).where(User.email == account.email).values(role="admin"))
    tokens = await login(client, account.email, account.password)
    account.access_token = tokens["access_token"]
    account.refresh_token = tokens["refresh_token"]
    return account
