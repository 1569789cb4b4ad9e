"""Structured output: a run that asks for a JSON Schema result gets an answer that matches it.

The schema goes to the provider as `response_format` (or, for a model configured with only
JSON mode or none, as `json_object` and/or an instruction); whatever comes back is validated
here, because not every provider enforces it. A failing answer gets one repair round (the
model is shown what was wrong); a second failure fails the run.

Schemas come from clients, so they are checked before any call: Draft 2020-12, at most
`MAX_SCHEMA_BYTES` and `MAX_DEPTH`, references only within the schema, and no `pattern`
or `patternProperties`: Python's regular expressions can backtrack for minutes on a crafted
pattern, and this would run them on the service's own event loop."""

from __future__ import annotations

from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import exceptions as _referencing

from steward.platform.errors import UnprocessableContent

MAX_SCHEMA_BYTES = 16_384
MAX_PROBLEMS = 5  # reported to the model and the client per failed answer
_REFUSED = frozenset({"pattern", "patternProperties"})


MAX_DEPTH = 32


def _walk(node: object, depth: int, keys: set[str], refs: list[object]) -> None:
    """Every key of a schema, and its `$ref`s; refuses nesting deeper than MAX_DEPTH (the
    encoder and the validator recurse)."""
    if depth > MAX_DEPTH:
        raise _refuse(f"the schema nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, dict):
        keys.update(node)
        refs.extend(value for key, value in node.items() if key in ("$ref", "$dynamicRef"))
        for value in node.values():
            _walk(value, depth + 1, keys, refs)
    elif isinstance(node, list):
        for item in node:
            _walk(item, depth + 1, keys, refs)


def _refuse(message: str) -> UnprocessableContent:
    loc = ["body", "response_format", "json_schema", "schema"]
    return UnprocessableContent(message, errors=[{"loc": loc, "msg": message, "type": "value"}])


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse (422, saying why) a schema this service will not validate against."""
    keys: set[str] = set()
    refs: list[object] = []
    _walk(schema, 0, keys, refs)
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise _refuse(f"the schema is over {MAX_SCHEMA_BYTES} bytes")
    refused = sorted(_REFUSED & keys)
    if refused:
        raise _refuse(f"{refused} are not supported in response schemas")
    if any(not isinstance(ref, str) or not ref.startswith("#") for ref in refs):
        # Nothing is fetched: a reference outside the schema could only fail when used.
        raise _refuse("only references within the schema ($ref: '#...') are supported")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _refuse(f"not a valid JSON Schema: {exc.message[:200]}") from None
    try:  # a reference to itself with nothing between loops on any value
        Draft202012Validator(schema).is_valid(None)
    except RecursionError:
        raise _refuse("the schema refers to itself without end") from None
    except _referencing.Unresolvable as exc:
        raise _refuse(f"the schema has a reference it does not define: {exc}"[:300]) from None


def problems(answer: str, schema: dict[str, Any]) -> list[str]:
    """What is wrong with `answer` as a value of `schema`; empty when it matches. A fenced
    answer (```json ... ```) is read inside its fence, as models often add one."""
    try:
        value = parsed(answer)
    except orjson.JSONDecodeError as exc:
        return [f"the answer is not JSON ({exc})"]
    found = []
    try:
        for error in Draft202012Validator(schema).iter_errors(value):
            where = "/".join(str(part) for part in error.absolute_path) or "(root)"
            found.append(f"{where}: {error.message[:200]}")
            if len(found) == MAX_PROBLEMS:
                break
    except _referencing.Unresolvable as exc:  # e.g. '#/$defs/missing' on a branch not tried
        return [f"the schema cannot be used: {exc}"[:200]]
    except RecursionError:  # a recursive schema over an answer nested hundreds deep
        return ["the answer nests deeper than the schema can be checked"]
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
