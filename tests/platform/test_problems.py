"""Every error path answers with an RFC 9457 problem that carries the request id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from steward.platform.errors import Conflict, NotFound

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "request_id"}


class _Item(BaseModel):
    name: str = Field(min_length=1, max_length=10)
    count: int


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    @app.post("/_test/items")
    async def create_item(item: _Item) -> _Item:
        return item

    @app.get("/_test/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        if item_id == 404:
            raise NotFound("item 404 does not exist")
        if item_id == 409:
            raise Conflict("item 409 clashes")
        return {"id": item_id}

    @app.get("/_test/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: db password is hunter2")

    return app


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["instance"] == response.request.url.path
    assert isinstance(body["type"], str) and body["type"].startswith("https://")
    return body


async def test_unknown_route_is_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/no/such/route"), 404)
    assert "/no/such/route" in str(body["detail"])


async def test_wrong_method_is_405_problem(client: httpx.AsyncClient) -> None:
    response = await client.delete("/health")
    body = assert_problem(response, 405)
    assert "DELETE" in str(body["detail"])
    assert "GET" in response.headers["allow"]


async def test_malformed_json_is_422_problem_with_errors(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/_test/items", content=b'{"name": "x", ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["detail"] == "the request body is not valid JSON"
    assert isinstance(body["errors"], list) and body["errors"]


async def test_invalid_fields_are_listed_without_echoing_input(client: httpx.AsyncClient) -> None:
    response = await client.post("/_test/items", json={"name": "far-too-long-name", "count": "x"})
    body = assert_problem(response, 422)
    errors = body["errors"]
    assert isinstance(errors, list)
    locations = {tuple(err["loc"]) for err in errors}
    assert locations == {("body", "name"), ("body", "count")}
    assert "far-too-long-name" not in response.text


async def test_oversized_body_by_header_is_413_problem(client: httpx.AsyncClient) -> None:
    big = b'{"name": "' + b"a" * 2_000_000 + b'", "count": 1}'
    response = await client.post(
        "/_test/items", content=big, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)


async def test_oversized_streamed_body_is_413_problem(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(40):
            yield b"a" * 65_536
        yield b'", "count": 1}'

    response = await client.post(
        "/_test/items", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_domain_errors_map_to_their_status(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/_test/items/404"), 404)
    assert body["detail"] == "item 404 does not exist"
    body = assert_problem(await client.get("/_test/items/409"), 409)
    assert str(body["type"]).endswith("/conflict")


async def test_path_parameter_type_error_is_422(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/_test/items/abc"), 422)


async def test_unhandled_error_is_500_without_internals_logged_once(
    client: httpx.AsyncClient, logs: object
) -> None:
    from tests.conftest import LogCapture

    assert isinstance(logs, LogCapture)
    response = await client.get("/_test/boom")
    body = assert_problem(response, 500)
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    errors = logs.events("http.unhandled_error")
    assert len(errors) == 1
    assert errors[0]["request_id"] == body["request_id"]
    assert "RuntimeError" in errors[0]["exception"]
    assert logs.text.count("Traceback") == 1


async def test_valid_request_still_works(client: httpx.AsyncClient) -> None:
    response = await client.post("/_test/items", json={"name": "ok", "count": 2})
    assert response.status_code == 200
    assert response.json() == {"name": "ok", "count": 2}
