"""Bounded input types: every string, number and date the API accepts fits the column that
stores it, checked where the input is parsed, so that bad input is a 422 naming the field
and never reaches PostgreSQL (where it would fail as a 500).

    Text        any client text; never U+0000 (PostgreSQL's text and JSONB cannot hold it).
                Bound its length with `Field(max_length=...)` of its column.
    Instant     a timezone-aware datetime that PostgreSQL can store once converted to UTC
                (`0001-01-01T00:00:00+14:00` is in year 0 there; Python cannot convert it)
    Int32       an `integer` column's range; Int64 a `bigint` column's
    WebhookUrl  an http(s) URL that fits its column (2,000 characters)

Use them in request schemas, query models and path/header/form parameters alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from pydantic import AfterValidator, AnyHttpUrl, AwareDatetime, Field, UrlConstraints
from pydantic_core import PydanticCustomError

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
URL_MAX_LENGTH = 2000

# One day inside Python's own range on each side: every offset (up to +/-24 h) converts.
EARLIEST = datetime.min.replace(tzinfo=UTC) + timedelta(days=1)
LATEST = datetime.max.replace(tzinfo=UTC) - timedelta(days=1)


def reject_nul(value: str) -> str:
    """A string with U+0000 is refused (PostgreSQL rejects it in every text type)."""
    if "\x00" in value:
        raise PydanticCustomError("string_nul", "must not contain the NUL character (U+0000)")
    return value


def _storable_instant(value: datetime) -> datetime:
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not EARLIEST <= in_utc <= LATEST:
        raise PydanticCustomError(
            "datetime_out_of_range",
            "must be between 0001-01-02 and 9999-12-30 once converted to UTC",
        )
    return value


def _fits_url_column(url: AnyHttpUrl) -> AnyHttpUrl:
    # Normalising (punycode, percent-encoding) can lengthen what was sent.
    if len(str(url)) > URL_MAX_LENGTH:
        raise PydanticCustomError(
            "url_too_long",
            "must be at most {max_length} characters",
            {"max_length": URL_MAX_LENGTH},
        )
    return url


Text = Annotated[str, AfterValidator(reject_nul)]
Instant = Annotated[AwareDatetime, AfterValidator(_storable_instant)]
Int32 = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=-INT64_MAX - 1, le=INT64_MAX)]
WebhookUrl = Annotated[
    AnyHttpUrl,
    UrlConstraints(max_length=URL_MAX_LENGTH, allowed_schemes=["http", "https"]),
    AfterValidator(_fits_url_column),
]
