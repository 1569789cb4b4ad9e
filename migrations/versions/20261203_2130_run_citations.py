"""run citations: the knowledge sources an answer cited

Revision ID: 9a4e7c2d1f08
Revises: 3f6d2a8c0b57
Create Date: 2026-12-03 21:30:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "9a4e7c2d1f08"
down_revision: str | None = "3f6d2a8c0b57"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "runs",
        sa.Column("citations", postgresql.JSONB(), server_default=sa.text("'[]'"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("runs", "citations")
