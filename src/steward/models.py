"""Every domain's SQLAlchemy models, imported so that Alembic sees the whole schema."""

from steward.accounts import models as accounts
from steward.platform.db import Base

__all__ = ["Base", "accounts"]
