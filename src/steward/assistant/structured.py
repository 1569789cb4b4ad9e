"""Structured output: a run that asks for a JSON Schema result gets an answer that matches it.

The schema goes to the provider as `response_format` (or, for a model configured with only
JSON mode or none, as `json_object` and/or an instruction); whatever comes back is validated
here, because not every provider enforces it. A failing answer gets one repair round (the
model is shown what was wrong); a second failure fails the run.

Schemas come from clients, so they are checked before any call: Draft 2020-12, at most
`MAX_SCHEMA_BYTES`, no remote `$ref` (jsonschema resolves none by default), and no `pattern`
or `patternProperties`: Python's regular expressions can backtrack for minutes on a crafted
pattern, and this would run them on the service's own event loop."""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from steward.platform.errors import UnprocessableContent

MAX_SCHEMA_BYTES = 16_384
MAX_PROBLEMS = 5  # reported to the model and the client per failed answer
_REFUSED = frozenset({"pattern", "patternProperties"})


def _keys(node: object) -> set[str]:
    if isinstance(node, dict):
        found = set(node)
        for value in node.values():
            found |= _keys(value)
        return found
    if isinstance(node, list):
        return set().union(*(_keys(item) for item in node)) if node else set()
    return set()


def _refuse(message: str) -> UnprocessableContent:
    loc = ["body", "response_format", "json_schema", "schema"]
    return UnprocessableContent(message, errors=[{"loc": loc, "msg": message, "type": "value"}])


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse (422, saying why) a schema this service will not validate against."""
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise _refuse(f"the schema is over {MAX_SCHEMA_BYTES} bytes")
    refused = sorted(_REFUSED & _keys(schema))
    if refused:
        raise _refuse(f"{refused} are not supported in response schemas")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _refuse(f"not a valid JSON Schema: {exc.message[:200]}") from None


def problems(answer: str, schema: dict[str, Any]) -> list[str]:
    """What is wrong with `answer` as a value of `schema`; empty when it matches. A fenced
    answer (```json ... ```) is read inside its fence, as models often add one."""
    try:
        value = parsed(answer)
    except orjson.JSONDecodeError as exc:
        return [f"the answer is not JSON ({exc})"]
    found = []
    for error in Draft202012Validator(schema).iter_errors(value):
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        found.append(f"{where}: {error.message[:200]}")
        if len(found) == MAX_PROBLEMS:
            break
    return found


def parsed(answer: str) -> Any:
    """The answer's JSON value; raises orjson.JSONDecodeError if it has none."""
    text = answer.strip()
    if text.startswith("```"):
        text = text.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    return orjson.loads(text)


def instruction(name: str, schema: dict[str, Any]) -> dict[str, str]:
    """A system message asking for the schema, for models that cannot take it as a format."""
    return {
        "role": "system",
        "content": f"Answer with only one JSON value (no prose, no code fence) matching the "
        f"JSON Schema named {name!r}: {orjson.dumps(schema).decode()}",
    }


def repair_request(found: list[str]) -> dict[str, str]:
    """The user turn of the repair round."""
    listed = "; ".join(found)
    return {
        "role": "user",
        "content": f"Your answer does not match the required JSON Schema: {listed}. Answer "
        "again with only the corrected JSON value.",
    }
