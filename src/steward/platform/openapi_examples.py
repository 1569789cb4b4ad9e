"""Examples for every request and success response in the OpenAPI document, so that the docs
(Swagger UI, ReDoc) and generated clients show a filled-in call for each operation.

An example is built from the schema: a field's own `examples` (models declare them where a
made-up value would mislead: an email, a password, a todo's title), else a value of the
right type and format within the field's limits. Operations that already carry an example
keep it. A test validates every example against its schema.
"""

from __future__ import annotations

import re
from typing import Any

_BY_FORMAT: dict[str, Any] = {
    "uuid": "7c9e6679-7425-40de-944b-e07fc1f90ae7",
    "date-time": "2026-12-04T09:30:00Z",
    "date": "2026-12-04",
    "time": "09:30:00",
    "email": "ada@example.com",
    "uri": "https://example.com/steward-hook",
    "binary": "<bytes>",
}
_MAX_DEPTH = 8


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def example_of(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    schema = _resolve(schema, components)
    for key in ("examples", "example", "const"):
        if key in schema:
            value = schema[key]
            return value[0] if key == "examples" and isinstance(value, list) and value else value
    if schema.get("default") is not None:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if _resolve(o, components).get("type") != "null"]
            return example_of((options or schema[key])[0], components, depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            value = example_of(part, components, depth + 1)
            if isinstance(value, dict):
                merged.update(value)
        return merged
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        if depth > _MAX_DEPTH:
            return {}
        return {name: example_of(field, components, depth + 1)
                for name, field in schema.get("properties", {}).items()}  # fmt: skip
    if kind == "array":
        item = example_of(schema.get("items", {}), components, depth + 1)
        return [item] * max(1, int(schema.get("minItems", 1)))
    if kind == "string":
        if schema.get("format") in _BY_FORMAT:
            return _BY_FORMAT[schema["format"]]
        literal = re.fullmatch(r"\^([\w.\-]+)\$", schema.get("pattern", ""))
        text = literal[1] if literal else "string"
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        text = text.ljust(low, "x")
        return text[: int(high)] if high is not None else text
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(1, low + (1 if "exclusiveMinimum" in schema else 0))
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


def document_examples(schema: dict[str, Any]) -> dict[str, Any]:
    """Add an `example` to each JSON or form request body and 2xx JSON response lacking one."""
    components = schema.get("components", {}).get("schemas", {})
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            contents = [operation.get("requestBody", {}).get("content", {})]
            contents += [
                response.get("content", {})
                for status, response in operation.get("responses", {}).items()
                if status.startswith("2")
            ]
            for content in contents:
                for media_type, body in content.items():
                    structured = media_type.endswith("json") or media_type in (
                        "application/x-www-form-urlencoded", "multipart/form-data")  # fmt: skip
                    if (
                        structured
                        and "schema" in body
                        and not ({"example", "examples"} & set(body))
                    ):
                        body["example"] = example_of(body["schema"], components)
    return schema
