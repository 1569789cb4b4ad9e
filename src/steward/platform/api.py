"""The versioned API's path prefix, and query parameters validated in one call.

Routers carry the full prefix themselves (instead of `include_router(prefix=...)`) so that
the matched route's template, used as a metric label and in logs, is the whole path.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, get_origin

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

API_V1 = "/api/v1"

M = TypeVar("M", bound=BaseModel)


class QueryModel(Generic[M]):
    """A dependency that validates a route's query parameters with one Pydantic model, in one
    call, and documents them in OpenAPI like FastAPI's own (pass `openapi_extra`).

    Written by hand for the hottest routes: FastAPI resolves query parameters one by one
    (its query-parameter models too), which measured 60-65 us for the todo list's eight,
    more than any other part of that route; one `model_validate` takes a few. Errors are
    FastAPI's RequestValidationError with `("query", name)` locations, so clients see the
    same 422 problem either way. Unknown parameters are ignored, as FastAPI does.
    """

    def __init__(self, model: type[M]) -> None:
        self.model = model
        fields = model.model_fields
        self._lists = frozenset(
            name for name, field in fields.items() if get_origin(field.annotation) is list
        )
        self._names = frozenset(fields)
        schema = model.model_json_schema()
        definitions = schema.get("$defs", {})
        required = set(schema.get("required", ()))
        self.openapi_extra: dict[str, Any] = {
            "parameters": [
                {
                    "name": name,
                    "in": "query",
                    "required": name in required,
                    "schema": _inline(prop, definitions),
                    **({"description": prop["description"]} if "description" in prop else {}),
                }
                for name, prop in schema["properties"].items()
            ]
        }

    async def __call__(self, request: Request) -> M:
        params = request.query_params
        data = {
            name: params.getlist(name) if name in self._lists else params[name]
            for name in params.keys()  # noqa: SIM118 (a multi-dict: keys once each)
            if name in self._names
        }
        try:
            return self.model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [
                    {**error, "loc": ("query", *error["loc"])}
                    for error in exc.errors(include_url=False)
                ]
            ) from None


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    """A JSON schema with its `#/$defs/...` references replaced by what they refer to."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {key: _inline(value, definitions) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    return schema
