"""Shapes of the notifications API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from steward.platform.inputs import Text, WebhookUrl


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


class WebhookSet(BaseModel):
    url: WebhookUrl = Field(description="where notifications are POSTed")


class WebhookRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    url: str
    created_at: datetime


class WebhookCreated(WebhookRead):
    secret: str = Field(description="signs every delivery; shown only now")


class DeviceRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    platform: Literal["ios", "android", "web"]
    token: Annotated[Text, Field(min_length=8, max_length=4096)] = Field(
        description="the FCM registration token or APNs device token"
    )
    name: Annotated[Text, Field(min_length=1, max_length=100)] | None = None


class DeviceRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    platform: str
    name: str | None
    created_at: datetime
    updated_at: datetime
