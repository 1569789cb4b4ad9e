"""Request and response shapes of the todos API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from steward.platform.inputs import Instant, Text

Title = Annotated[Text, Field(min_length=1, max_length=200)]
Description = Annotated[Text, Field(max_length=10_000)]
Priority = Annotated[int, Field(ge=0, le=3, description="0 none, 1 low, 2 medium, 3 high")]


def _clean_tags(tags: list[str]) -> list[str]:
    # Case-insensitive and unique, in first-seen order: "Work" and "work" are one tag.
    seen: dict[str, None] = {}
    for tag in tags:
        seen.setdefault(tag.strip().lower(), None)
    return list(seen)


Tag = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[\w\-: ]+$")]
Tags = Annotated[list[Tag], Field(max_length=20), AfterValidator(_clean_tags)]


class TodoCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"title": "Buy milk", "description": "oat, 2 litres", "due_at": "2026-12-05T18:00:00Z",
         "priority": 2, "tags": ["errands"], "remind_at": "2026-12-05T17:30:00Z"}]})  # fmt: skip

    title: Title
    description: Description = ""
    due_at: Instant | None = None
    priority: Priority = 0
    tags: Tags = Field(default_factory=list)
    remind_at: Instant | None = None


class TodoUpdate(BaseModel):
    """Partial update: only the fields sent are changed; `null` clears `due_at`."""

    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Description | None = None
    due_at: Instant | None = None
    priority: Priority | None = None
    tags: Tags | None = None
    done: bool | None = None
    remind_at: Instant | None = None


class TodoRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    description: str
    due_at: datetime | None
    done: bool
    done_at: datetime | None
    priority: int
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    version: int
    remind_at: datetime | None = None


class TodoSort(StrEnum):
    CREATED = "created_at"
    CREATED_DESC = "-created_at"
    DUE = "due_at"
    DUE_DESC = "-due_at"
    PRIORITY = "priority"
    PRIORITY_DESC = "-priority"


class TodoListQuery(BaseModel):
    """The todo list's query parameters."""

    limit: int = Field(20, ge=1, le=100, description="page size (1-100)")
    cursor: str | None = Field(
        None, max_length=512, description="`next_cursor` from the previous page"
    )
    done: bool | None = Field(None, description="only done (true) or open (false) todos")
    due_before: Instant | None = Field(None, description="due before this instant")
    due_after: Instant | None = Field(None, description="due after this instant")
    tag: list[Annotated[Text, Field(max_length=32)]] = Field(
        [], max_length=10, description="all must match"
    )
    q: Text | None = Field(
        None, min_length=1, max_length=200, description="text in the title or description"
    )
    sort: TodoSort = Field(TodoSort.CREATED_DESC, description="order of the list")
