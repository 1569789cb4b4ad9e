"""Every operation shows an example of its request body and its success response, and each
example is valid against the schema it illustrates (so the docs never show a call that the
API would refuse)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from steward.app import create_app
from tests.conftest import make_settings
from tests.engines import EngineSet


@pytest.fixture(scope="module")
def document(engines: EngineSet) -> dict[str, Any]:
    app: FastAPI = create_app(make_settings(engines))
    return app.openapi()


def _bodies(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            name = f"{method.upper()} {path}"
            for media_type, body in operation.get("requestBody", {}).get("content", {}).items():
                found.append((f"{name} request ({media_type})", media_type, body))
            for status, response in operation.get("responses", {}).items():
                if status.startswith("2"):
                    for media_type, body in response.get("content", {}).items():
                        found.append((f"{name} {status} ({media_type})", media_type, body))
    return found


def test_every_json_body_and_success_response_has_a_valid_example(
    document: dict[str, Any],
) -> None:
    whole = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:doc", whole)
    missing, invalid = [], []
    checked = 0
    for name, media_type, body in _bodies(document):
        if not (media_type.endswith("json") or media_type.endswith("form-urlencoded")):
            continue
        schema = body.get("schema")
        if not schema:
            continue
        if "example" not in body:
            missing.append(name)
            continue
        rooted = _rooted(schema)
        validator = Draft202012Validator(rooted, registry=registry)
        errors = [e.message for e in validator.iter_errors(body["example"])]
        if errors:
            invalid.append(f"{name}: {errors[:2]}")
        checked += 1
    assert not missing, missing
    assert not invalid, invalid
    assert checked > 60


def _rooted(schema: Any) -> Any:
    """`#/components/...` references, pointed at the whole document in the registry."""
    if isinstance(schema, dict):
        return {k: (f"urn:doc{v}" if k == "$ref" else _rooted(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_rooted(item) for item in schema]
    return schema
