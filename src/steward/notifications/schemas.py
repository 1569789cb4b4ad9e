"""Shapes of the notifications API."""

from __future__ import annotations

import uuid
from datetime import datetime, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class QuietHoursSet(BaseModel):
    """No push from `start` to `end` (local times; `end` before `start` spans midnight)."""

    model_config = ConfigDict(extra="forbid", from_attributes=True)

    start: time
    end: time
    timezone: Annotated[Text, Field(min_length=1, max_length=64)] = Field(
        description="an IANA time zone, e.g. Europe/Paris"
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"not a known time zone: {value!r}") from None
        return value

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: time) -> time:
        return value.replace(tzinfo=None, microsecond=0)
