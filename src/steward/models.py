"""Every domain's SQLAlchemy models, imported so that Alembic sees the whole schema."""

from steward.accounts import models as accounts
from steward.assistant import models as assistant
from steward.jobs import models as jobs
from steward.knowledge import models as knowledge
from steward.notifications import models as notifications
from steward.platform.db import Base
from steward.todos import models as todos

__all__ = ["Base", "accounts", "assistant", "jobs", "knowledge", "notifications", "todos"]
