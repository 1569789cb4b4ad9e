"""Request and response shapes of the knowledge API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from steward.platform.inputs import Text

Title = Annotated[Text, Field(min_length=1, max_length=200)]


class DocumentCreate(BaseModel):
    """A document given as text (Markdown is read as such when `media_type` says so)."""

    model_config = ConfigDict(extra="forbid")

    title: Title
    text: Annotated[Text, Field(min_length=1)]
    media_type: Annotated[
        str, Field(pattern=r"^text/(plain|markdown|html)$", description="how to read `text`")
    ] = "text/plain"
    shared: bool = Field(default=False, description="searchable by every user (admins only)")


class DocumentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    media_type: str
    status: str = Field(description="queued, processing, ready or failed")
    error: str | None = Field(description="why ingestion failed")
    chunk_count: int
    byte_size: int
    shared: bool
    embedding_space: str | None = Field(description="the model its chunks were embedded with")
    dimensions: int | None
    created_at: datetime
    updated_at: datetime
    job_id: str | None = Field(
        default=None,
        description="on upload: the ingestion job it started (`GET /api/v1/jobs/{job_id}`)",
    )


class SearchMode(StrEnum):
    HYBRID = "hybrid"
    VECTOR = "vector"
    LEXICAL = "lexical"


class SearchHit(BaseModel):
    document_id: uuid.UUID
    chunk_id: uuid.UUID
    title: str
    heading: str
    text: str
    score: float


class SearchResults(BaseModel):
    items: list[SearchHit]
    mode: SearchMode = Field(description="the ranking used (hybrid falls back to lexical "
                             "when vectors are unavailable)")  # fmt: skip
