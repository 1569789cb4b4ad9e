"""The OpenAPI document states the errors the API really answers with: RFC 9457 problems
(`application/problem+json`, with `errors[]` on 422) for every status an operation can
return, each with an example, instead of FastAPI's default `{"detail": [...]}`.

Which statuses an operation can return follows from how it is built, so they are derived
here once rather than repeated on every route:
    401, 403    it takes credentials (a security requirement)
    404         its path has parameters (absent, or not the caller's)
    413         it takes a body (over MAX_BODY_BYTES)
    422         it takes parameters or a body
    429, 503    it is rate limited / needs PostgreSQL or Redis (every API route)
plus whatever a route lists itself (409, 410, 412...). Routes whose errors use another
shape (the OpenAI-compatible `/v1` gateway) name it with `ERROR_SHAPE` and list theirs.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI

from steward.platform.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE, slug_for
from steward.platform.openapi_examples import document_examples

# `openapi_extra={ERROR_SHAPE: "openai"}` on a route: its errors are OpenAI's `{"error": ...}`.
ERROR_SHAPE = "x-error-shape"
# Service endpoints that touch nothing and are never limited.
_PLAIN_PATHS = frozenset({"/health", "/metrics"})

_PROBLEM: dict[str, Any] = {
    "title": "Problem",
    "description": "An RFC 9457 problem: every error response of the API.",
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance"],
    "properties": {
        "type": {"type": "string", "format": "uri", "description": "identifies the problem"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "what went wrong, for a human"},
        "instance": {"type": "string", "description": "the request's path"},
        "request_id": {"type": ["string", "null"], "description": "quote it in reports"},
        "errors": {
            "type": "array",
            "description": "on 422: each invalid field",
            "items": {
                "type": "object",
                "required": ["loc", "msg", "type"],
                "properties": {
                    "loc": {
                        "type": "array",
                        "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "additionalProperties": True,
}
_OPENAI_ERROR: dict[str, Any] = {
    "title": "OpenAIError",
    "description": "Errors of the OpenAI-compatible gateway, in OpenAI's own shape.",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer"},
    }
}
_DEFAULT_DETAIL = {
    400: "There was an error parsing the body",
    401: "authentication required: send a bearer token or an x-api-key",
    403: "missing scope 'todos:write'",
    404: "not found, or not yours",
    409: "clashes with the current state",
    410: "expired",
    412: "If-Match does not match the current ETag",
    413: "the request body is larger than the limit",
    422: "the request is invalid",
    429: "rate limit exceeded; retry after the time in Retry-After",
    503: "a service this request needs is unavailable; retry shortly",
}


def _statuses(path: str, operation: dict[str, Any], *, derive: bool) -> set[int]:
    listed = {int(code) for code in operation.get("responses", {}) if code.isdigit()}
    statuses = {code for code in listed if code >= 400}
    if path in _PLAIN_PATHS or not derive:
        return statuses
    has_body = "requestBody" in operation
    if has_body or operation.get("parameters"):
        statuses.add(422)
    if has_body:
        statuses |= {400, 413}  # 400: a body that cannot be decoded (not UTF-8)
    if "{" in path:
        statuses.add(404)
    if operation.get("security"):
        statuses |= {401, 403}
    if path != "/ready":
        statuses.add(429)
    statuses.add(503)
    return statuses


def _problem_example(status: int, path: str) -> dict[str, Any]:
    example: dict[str, Any] = {
        "type": PROBLEM_BASE + slug_for(status),
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": _DEFAULT_DETAIL.get(status, HTTPStatus(status).phrase),
        "instance": path,
        "request_id": "5f0c2a7d1e9b4c3a0000000000000001",
    }
    if status == 422:
        example["errors"] = [
            {"loc": ["body", "title"], "msg": "String should have at most 200 characters",
             "type": "string_too_long"}
        ]  # fmt: skip
    return example


def _openai_example(status: int) -> dict[str, Any]:
    kind = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_error"}
    return {
        "error": {
            "message": _DEFAULT_DETAIL.get(status, HTTPStatus(status).phrase),
            "type": kind.get(status, "invalid_request_error" if status < 500 else "api_error"),
            "param": None,
            "code": None,
        }
    }


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite `schema` (FastAPI's document) in place so every error response is described
    as what the API sends; returns it."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = _PROBLEM
    components["OpenAIError"] = _OPENAI_ERROR
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            openai = operation.pop(ERROR_SHAPE, None) == "openai"
            responses = operation.setdefault("responses", {})
            if openai:  # the gateway answers 400 for invalid input and lists its own
                responses.pop("422", None)
            for status in sorted(_statuses(path, operation, derive=not openai)):
                previous = responses.get(str(status), {})
                description = previous.get("description") or HTTPStatus(status).phrase
                if description == "Validation Error":
                    description = "invalid input; `errors[]` names each field"
                if openai:
                    content = {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/OpenAIError"},
                            "example": _openai_example(status),
                        }
                    }
                else:
                    content = {
                        PROBLEM_CONTENT_TYPE: {
                            "schema": {"$ref": "#/components/schemas/Problem"},
                            "example": _problem_example(status, path),
                        }
                    }
                response: dict[str, Any] = {"description": description, "content": content}
                if status in (429, 503):
                    response["headers"] = _RETRY_AFTER
                responses[str(status)] = response
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    """Have `app` serve the document with its errors described (built once, on first use)."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_examples(document_errors(build()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
