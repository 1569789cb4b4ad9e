"""Every domain's SQLAlchemy models, imported so that Alembic sees the whole schema."""

from steward.accounts import models as accounts
from steward.platform.db import Base
from steward.todos import models as todos

__all__ = ["Base", "accounts", "todos"]
