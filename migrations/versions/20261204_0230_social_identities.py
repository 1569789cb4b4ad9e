"""Social sign-in: an account's identities at Apple and Google.

Revision ID: 8d3a5f1b2c64
Revises: 7c2f4e8a9d31
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "8d3a5f1b2c64"
down_revision: str | None = "7c2f4e8a9d31"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "social_identities",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320)),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            ondelete="CASCADE",
            name=op.f("fk_social_identities_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_social_identities")),
        sa.UniqueConstraint("provider", "subject", name=op.f("uq_social_identities_provider")),
    )
    op.create_index("ix_social_identities_user_id", "social_identities", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_social_identities_user_id", table_name="social_identities")
    op.drop_table("social_identities")
