"""reminders and notifications: todos.remind_at/reminded_at, notifications (once per reminder)

Revision ID: 78a04875e1b5
Revises: 103f660d3a57
Create Date: 2026-11-24 07:42:54.966016+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "78a04875e1b5"
down_revision: str | None = "103f660d3a57"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("todo_id", sa.Uuid(), nullable=True),
        sa.Column("scheduled_for", sa.DateTime(timezone=True), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("body", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["todo_id"],
            ["todos.id"],
            name=op.f("fk_notifications_todo_id_todos"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("todo_id", "kind", "scheduled_for", name="uq_notifications_once"),
    )
    op.create_index(
        "ix_notifications_unread",
        "notifications",
        ["user_id"],
        unique=False,
        postgresql_where=sa.text("read_at IS NULL"),
    )
    op.create_index(
        "ix_notifications_user_created",
        "notifications",
        ["user_id", "created_at", "id"],
        unique=False,
    )
    op.add_column("todos", sa.Column("remind_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("todos", sa.Column("reminded_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_todos_pending_reminders",
        "todos",
        ["remind_at"],
        unique=False,
        postgresql_where=sa.text(
            "remind_at IS NOT NULL AND reminded_at IS DISTINCT FROM remind_at AND NOT done"
        ),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_todos_pending_reminders",
        table_name="todos",
        postgresql_where=sa.text(
            "remind_at IS NOT NULL AND reminded_at IS DISTINCT FROM remind_at AND NOT done"
        ),
    )
    op.drop_column("todos", "reminded_at")
    op.drop_column("todos", "remind_at")
    op.drop_index("ix_notifications_user_created", table_name="notifications")
    op.drop_index(
        "ix_notifications_unread",
        table_name="notifications",
        postgresql_where=sa.text("read_at IS NULL"),
    )
    op.drop_table("notifications")
