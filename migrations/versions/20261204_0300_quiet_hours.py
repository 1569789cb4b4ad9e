"""Quiet hours: when a user wants no push.

Revision ID: a1c5d7e9f042
Revises: 9e4b6c2d3f75
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "a1c5d7e9f042"
down_revision: str | None = "9e4b6c2d3f75"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quiet_hours",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("start", sa.Time(), nullable=False),
        sa.Column("end", sa.Time(), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_quiet_hours_user_id_users")
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_quiet_hours")),
    )


def downgrade() -> None:
    op.drop_table("quiet_hours")
