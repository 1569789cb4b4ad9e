"""Input PostgreSQL cannot hold is a 422 problem naming the field, never a 500: NUL
characters, datetimes outside the storable range, overlong URLs, integers past a column."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.factories import make_account, make_admin

NUL = "a\x00b"
TOO_EARLY = "0001-01-01T00:00:00+14:00"
TOO_LATE = "9999-12-31T23:59:59-14:00"


def _assert_names(response: httpx.Response, *loc: str | int) -> None:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    locations = [tuple(error["loc"]) for error in response.json()["errors"]]
    assert any(found[: len(loc)] == loc for found in locations), locations


@pytest.mark.parametrize(
    ("method", "path", "body", "loc"),
    [
        ("POST", "/api/v1/todos", {"title": NUL}, ("body", "title")),
        ("POST", "/api/v1/todos", {"title": "t", "description": NUL}, ("body", "description")),
        ("POST", "/api/v1/todos", {"title": "t", "due_at": TOO_EARLY}, ("body", "due_at")),
        ("POST", "/api/v1/todos", {"title": "t", "due_at": TOO_LATE}, ("body", "due_at")),
        ("POST", "/api/v1/todos", {"title": "t", "remind_at": TOO_LATE}, ("body", "remind_at")),
        ("PATCH", "/api/v1/users/me", {"display_name": NUL}, ("body", "display_name")),
        ("POST", "/api/v1/assistant/conversations", {"title": NUL}, ("body", "title")),
        ("PUT", "/api/v1/notifications/webhook",
         {"url": f"https://{'a' * 5000}.example.com/hook"}, ("body", "url")),
    ],
)  # fmt: skip
async def test_unstorable_body_values_are_422(
    client: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], loc: tuple[str, ...]
) -> None:
    account = await make_account(client)
    response = await client.request(method, path, json=body, headers=account.headers)
    _assert_names(response, *loc)


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"q": NUL}, ("query", "q")),
        ({"tag": NUL}, ("query", "tag")),
        ({"due_before": TOO_EARLY}, ("query", "due_before")),
        ({"due_after": TOO_LATE}, ("query", "due_after")),
        ({"cursor": NUL}, ("query", "cursor")),
    ],
)
async def test_unstorable_query_values_are_422(
    client: httpx.AsyncClient, params: dict[str, str], loc: tuple[str, ...]
) -> None:
    account = await make_account(client)
    response = await client.get("/api/v1/todos", params=params, headers=account.headers)
    _assert_names(response, *loc)


async def test_nul_in_login_username_and_api_key_name_is_422(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    login = await client.post(
        "/api/v1/auth/token", data={"username": f"x{NUL}@example.com", "password": "p"}
    )
    _assert_names(login, "body", "username")
    key = await client.post(
        "/api/v1/api-keys", json={"name": NUL, "scopes": ["todos:read"]}, headers=account.headers
    )
    _assert_names(key, "body", "name")


async def test_nul_in_assistant_message_is_422(client: httpx.AsyncClient) -> None:
    account = await make_account(client)
    created = await client.post(
        "/api/v1/assistant/conversations", json={"title": "t"}, headers=account.headers
    )
    conversation = created.json()["id"]
    response = await client.post(
        f"/api/v1/assistant/conversations/{conversation}/messages",
        json={"content": NUL},
        headers=account.headers,
    )
    _assert_names(response, "body", "content")


async def test_cursors_that_decode_to_unstorable_values_are_422(client: httpx.AsyncClient) -> None:
    from steward.platform.pagination import encode_cursor

    account = await make_account(client)
    for sort, keys in (
        ("-created_at", [TOO_EARLY, "00000000-0000-0000-0000-000000000000"]),
        ("-created_at", ["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]),
        ("priority", [2**40, "2020-01-01T00:00:00+00:00", "00000000-0000-0000-0000-000000000000"]),
    ):
        cursor = encode_cursor({"s": sort, "k": keys})
        response = await client.get(
            "/api/v1/todos", params={"cursor": cursor, "sort": sort}, headers=account.headers
        )
        _assert_names(response, "query", "cursor")
    conversation = (
        await client.post("/api/v1/assistant/conversations", json={}, headers=account.headers)
    ).json()["id"]
    for cursor in ("9" * 30, "\u0661\u0662"):  # past bigint; Arabic-Indic digits
        response = await client.get(
            f"/api/v1/assistant/conversations/{conversation}/messages",
            params={"cursor": cursor},
            headers=account.headers,
        )
        _assert_names(response, "query", "cursor")


async def test_admin_path_values_past_their_columns_are_422(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    admin = await make_admin(client, app)
    response = await client.post(
        "/api/v1/admin/prompts/assistant/versions/10000000000000/activate", headers=admin.headers
    )
    _assert_names(response, "path", "version")
    response = await client.get("/api/v1/admin/prompts/a%00b", headers=admin.headers)
    _assert_names(response, "path", "name")
