"""Sessions per device: the device name, platform, last address and last use of a sign-in.

Revision ID: 7c2f4e8a9d31
Revises: 5b1e9d3c7a20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "7c2f4e8a9d31"
down_revision: str | None = "5b1e9d3c7a20"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("device_name", sa.String(100)))
    op.add_column("sessions", sa.Column("platform", sa.String(16)))
    op.add_column("sessions", sa.Column("ip", sa.String(45)))
    op.add_column("sessions", sa.Column("last_used_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    for column in ("last_used_at", "ip", "platform", "device_name"):
        op.drop_column("sessions", column)
