"""Keyset pagination: opaque cursors and the list envelope every collection returns."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import orjson
from fastapi import Query
from pydantic import BaseModel, TypeAdapter
from sqlalchemy import Select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from steward.platform.errors import UnprocessableContent
from steward.platform.inputs import Instant, Int32, Text

T = TypeVar("T")
M = TypeVar("M")

Limit = Annotated[int, Query(ge=1, le=100, description="page size (1-100)")]
Cursor = Annotated[
    Text | None,
    Query(max_length=512, description="`next_cursor` from the previous page"),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(values: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values, default=str)).decode().rstrip("=")


def invalid_cursor() -> UnprocessableContent:
    return UnprocessableContent(
        "cursor is not valid; pass `next_cursor` from a previous page unchanged",
        errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "cursor"}],
    )


def decode_cursor(cursor: str) -> dict[str, Any]:
    """The values a cursor carries; a cursor that was not made here is a 422."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        values = None
    if not isinstance(values, dict):
        raise invalid_cursor()
    return values


_INSTANT: TypeAdapter[datetime] = TypeAdapter(Instant)
_INT32: TypeAdapter[int] = TypeAdapter(Int32)


def cursor_instant(value: Any) -> datetime:
    """A datetime a cursor carries, held to what a client could send (a cursor is input)."""
    try:
        return _INSTANT.validate_python(datetime.fromisoformat(value))
    except (TypeError, ValueError):  # ValidationError is a ValueError
        raise invalid_cursor() from None


def cursor_int32(value: Any) -> int:
    try:
        return _INT32.validate_python(value, strict=True)
    except ValueError:
        raise invalid_cursor() from None


async def newest_first(
    session: AsyncSession,
    query: Select[M],
    *,
    at: InstrumentedAttribute[datetime],
    key: InstrumentedAttribute[uuid.UUID],
    limit: int,
    cursor: str | None,
) -> tuple[list[M], str | None]:
    """One page of `query` ordered by (`at`, `key`) descending, continuing after `cursor`:
    the keyset pagination every newest-first list shares."""
    if cursor is not None:
        values = decode_cursor(cursor)
        try:
            after = (cursor_instant(values["at"]), uuid.UUID(values["id"]))
        except (KeyError, TypeError, ValueError):
            raise invalid_cursor() from None
        query = query.where(tuple_(at, key) < tuple_(*after))
    query = query.order_by(at.desc(), key.desc()).limit(limit + 1)
    rows = list((await session.execute(query)).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    last = rows[-1]
    next_cursor = encode_cursor(
        {"at": getattr(last, at.key).isoformat(), "id": str(getattr(last, key.key))}
    )
    return rows, next_cursor
