"""Shapes of the notifications API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class NotificationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    todo_id: uuid.UUID | None
    scheduled_for: datetime | None
    title: str
    body: str
    created_at: datetime
    read_at: datetime | None


class ReadAll(BaseModel):
    marked: int
