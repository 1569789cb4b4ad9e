"""Every domain's SQLAlchemy models, imported so that Alembic sees the whole schema."""

from steward.platform.db import Base

__all__ = ["Base"]
