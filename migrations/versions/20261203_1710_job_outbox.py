"""job outbox: a job's task and arguments are stored with it, and when it was sent

Revision ID: 7b1e0c4d9a21
Revises: 554c25314e97
Create Date: 2026-12-03 17:10:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "7b1e0c4d9a21"
down_revision: str | None = "554c25314e97"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "jobs",
        sa.Column("args", postgresql.JSONB(), server_default=sa.text("'[]'"), nullable=False),
    )
    op.add_column(
        "jobs",
        sa.Column("kwargs", postgresql.JSONB(), server_default=sa.text("'{}'"), nullable=False),
    )
    op.add_column("jobs", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET sent_at = created_at")  # every job before this was sent
    op.alter_column("jobs", "owner_id", existing_type=sa.Uuid(), nullable=True)
    op.create_index(
        "ix_jobs_unsent", "jobs", ["created_at"], postgresql_where=sa.text("sent_at IS NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unsent", table_name="jobs")
    op.execute("DELETE FROM jobs WHERE owner_id IS NULL")
    op.alter_column("jobs", "owner_id", existing_type=sa.Uuid(), nullable=False)
    op.drop_column("jobs", "sent_at")
    op.drop_column("jobs", "kwargs")
    op.drop_column("jobs", "args")
