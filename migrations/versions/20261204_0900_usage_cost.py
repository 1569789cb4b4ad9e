"""Cached and reasoning tokens and cost, per run and per usage day.

Revision ID: c3e5a7b9d124
Revises: b7d2e4f6a813
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "c3e5a7b9d124"
down_revision: str | None = "b7d2e4f6a813"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table, counter in (("runs", sa.Integer()), ("assistant_usage", sa.BigInteger())):
        op.add_column(table, sa.Column("cached_tokens", counter, server_default="0",
                                       nullable=False))  # fmt: skip
        op.add_column(table, sa.Column("reasoning_tokens", counter, server_default="0",
                                       nullable=False))  # fmt: skip
    op.add_column("runs", sa.Column("cost", sa.Numeric(24, 10), nullable=True))
    op.add_column("runs", sa.Column("currency", sa.String(3), nullable=True))
    op.add_column("assistant_usage", sa.Column("cost", sa.Numeric(24, 10), server_default="0",
                                               nullable=False))  # fmt: skip


def downgrade() -> None:
    op.drop_column("runs", "currency")
    for table in ("runs", "assistant_usage"):
        op.drop_column(table, "cost")
        op.drop_column(table, "reasoning_tokens")
        op.drop_column(table, "cached_tokens")
