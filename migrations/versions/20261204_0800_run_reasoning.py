"""A run's reasoning: what a thinking model streamed before its answer, kept apart from it.

Revision ID: b7d2e4f6a813
Revises: a1c5d7e9f042
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "b7d2e4f6a813"
down_revision: str | None = "a1c5d7e9f042"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("reasoning", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "reasoning")
