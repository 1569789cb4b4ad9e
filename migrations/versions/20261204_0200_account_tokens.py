"""Email verification and password reset: users.email_verified_at, account_tokens.

Revision ID: 5b1e9d3c7a20
Revises: 9a4e7c2d1f08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "5b1e9d3c7a20"
down_revision: str | None = "9a4e7c2d1f08"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("users", sa.Column("email_verified_at", sa.DateTime(timezone=True)))
    op.create_table(
        "account_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            ondelete="CASCADE",
            name=op.f("fk_account_tokens_user_id_users"),
        ),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_tokens")),
        sa.CheckConstraint(
            "purpose IN ('verify_email', 'password_reset')", name=op.f("ck_account_tokens_purpose")
        ),
    )
    op.create_index("ix_account_tokens_user_id", "account_tokens", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_account_tokens_user_id", table_name="account_tokens")
    op.drop_table("account_tokens")
    op.drop_column("users", "email_verified_at")
