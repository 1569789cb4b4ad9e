"""knowledge: documents, chunks with a full-text index, and (where pgvector exists) their
embeddings with an HNSW index for the offline embedder's 256 dimensions

Revision ID: 3f6d2a8c0b57
Revises: 7b1e0c4d9a21
Create Date: 2026-12-03 21:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "3f6d2a8c0b57"
down_revision: str | None = "7b1e0c4d9a21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "knowledge_documents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("media_type", sa.String(length=100), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("embedding_space", sa.String(length=200), nullable=True),
        sa.Column("dimensions", sa.Integer(), nullable=True),
        sa.Column("shared", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'ready', 'failed')",
            name=op.f("ck_knowledge_documents_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            ondelete="CASCADE",
            name=op.f("fk_knowledge_documents_owner_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_documents")),
        sa.UniqueConstraint("owner_id", "content_hash", name="uq_knowledge_documents_content"),
    )
    op.create_index(
        "ix_knowledge_documents_owner_created",
        "knowledge_documents",
        ["owner_id", "created_at", "id"],
    )
    op.create_index(
        "ix_knowledge_documents_shared",
        "knowledge_documents",
        ["shared"],
        postgresql_where=sa.text("shared"),
    )
    op.create_index(
        "ix_knowledge_documents_unfinished",
        "knowledge_documents",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('queued', 'processing')"),
    )
    op.create_table(
        "knowledge_chunks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("heading", sa.Text(), server_default="", nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("lexemes", postgresql.TSVECTOR(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["knowledge_documents.id"],
            ondelete="CASCADE",
            name=op.f("fk_knowledge_chunks_document_id_knowledge_documents"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_knowledge_chunks")),
        sa.UniqueConstraint("document_id", "position", name="uq_knowledge_chunks_position"),
    )
    op.create_index(
        "ix_knowledge_chunks_lexemes", "knowledge_chunks", ["lexemes"], postgresql_using="gin"
    )
    has_vector = (
        op.get_bind()
        .exec_driver_sql("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        .scalar()
    )
    if has_vector:
        # Outside the ORM (knowledge/models.py says why). A vector column of no fixed
        # dimension holds every model's vectors; each dimension gets its own partial HNSW
        # index on a cast to that dimension (knowledge/repository.py makes new ones).
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        op.execute(
            """
            CREATE TABLE knowledge_embeddings (
                chunk_id uuid NOT NULL REFERENCES knowledge_chunks (id) ON DELETE CASCADE,
                space varchar(200) NOT NULL,
                dimensions integer NOT NULL,
                embedding vector NOT NULL,
                PRIMARY KEY (chunk_id, space)
            )
            """
        )
        op.execute(
            "CREATE INDEX ix_knowledge_embeddings_256 ON knowledge_embeddings "
            "USING hnsw ((embedding::vector(256)) vector_cosine_ops) WHERE dimensions = 256"
        )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS knowledge_embeddings")
    op.drop_table("knowledge_chunks")
    op.drop_table("knowledge_documents")
