"""todos: per-user todos with sort indexes, and stored Idempotency-Key responses

Revision ID: 103f660d3a57
Revises: 803ec7d1f19e
Create Date: 2026-11-24 06:50:21.877641+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "103f660d3a57"
down_revision: str | None = "803ec7d1f19e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("response", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"],
            ["users.id"],
            name=op.f("fk_idempotency_keys_owner_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("owner_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(
        "ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"], unique=False
    )
    op.create_table(
        "todos",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("done", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("priority", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("tags", sa.ARRAY(sa.String(length=32)), server_default="{}", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.CheckConstraint(
            "char_length(description) <= 10000", name=op.f("ck_todos_description_length")
        ),
        sa.CheckConstraint(
            "char_length(title) BETWEEN 1 AND 200", name=op.f("ck_todos_title_length")
        ),
        sa.CheckConstraint("priority BETWEEN 0 AND 3", name=op.f("ck_todos_priority")),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_todos_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_todos")),
    )
    op.create_index(
        "ix_todos_owner_created", "todos", ["owner_id", "created_at", "id"], unique=False
    )
    op.create_index(
        "ix_todos_owner_due",
        "todos",
        [
            "owner_id",
            sa.literal_column("coalesce(due_at, '9999-12-31 00:00:00+00'::timestamptz)"),
            "id",
        ],
        unique=False,
    )
    op.create_index(
        "ix_todos_owner_priority",
        "todos",
        ["owner_id", "priority", "created_at", "id"],
        unique=False,
    )
    op.create_index("ix_todos_tags", "todos", ["tags"], unique=False, postgresql_using="gin")


def downgrade() -> None:
    op.drop_index("ix_todos_tags", table_name="todos", postgresql_using="gin")
    op.drop_index("ix_todos_owner_priority", table_name="todos")
    op.drop_index("ix_todos_owner_due", table_name="todos")
    op.drop_index("ix_todos_owner_created", table_name="todos")
    op.drop_table("todos")
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
