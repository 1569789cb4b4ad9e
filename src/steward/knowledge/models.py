"""Tables of the knowledge domain: documents and their chunks. Chunk vectors live in
`knowledge_embeddings`, created by the migration only where PostgreSQL has pgvector and
written with SQL (knowledge/repository.py), so the ORM never needs the `vector` type."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.orm import Mapped, deferred, mapped_column

from steward.platform.db import Base, new_id


class DocumentStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


class Document(Base):
    __tablename__ = "knowledge_documents"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    media_type: Mapped[str] = mapped_column(String(100))
    content_hash: Mapped[str] = mapped_column(String(64))
    byte_size: Mapped[int] = mapped_column(Integer)
    # The upload itself, until ingestion has turned it into chunks.
    content: Mapped[bytes | None] = deferred(mapped_column(LargeBinary))
    status: Mapped[str] = mapped_column(String(16), server_default=DocumentStatus.QUEUED.value)
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, server_default="0")
    # The embedding model ("provider:model") and dimension its chunk vectors were made with.
    embedding_space: Mapped[str | None] = mapped_column(String(200))
    dimensions: Mapped[int | None] = mapped_column(Integer)
    shared: Mapped[bool] = mapped_column(server_default=text("false"))
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'processing', 'ready', 'failed')", name="status_known"
        ),
        UniqueConstraint("owner_id", "content_hash", name="uq_knowledge_documents_content"),
        Index("ix_knowledge_documents_owner_created", "owner_id", "created_at", "id"),
        Index("ix_knowledge_documents_shared", "shared", postgresql_where=text("shared")),
        Index(
            "ix_knowledge_documents_unfinished",
            "updated_at",
            postgresql_where=text("status IN ('queued', 'processing')"),
        ),
    )


class Chunk(Base):
    __tablename__ = "knowledge_chunks"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("knowledge_documents.id", ondelete="CASCADE")
    )
    position: Mapped[int] = mapped_column(Integer)
    heading: Mapped[str] = mapped_column(Text, server_default="")
    text: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer)
    # Lexical terms (knowledge/lexical.py: words, and CJK character bigrams) for the
    # full-text index, which then works the same for Chinese and English.
    lexemes: Mapped[str] = mapped_column(TSVECTOR)

    __table_args__ = (
        UniqueConstraint("document_id", "position", name="uq_knowledge_chunks_position"),
        Index("ix_knowledge_chunks_lexemes", "lexemes", postgresql_using="gin"),
    )
