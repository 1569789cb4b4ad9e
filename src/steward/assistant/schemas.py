"""Shapes of the assistant API."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from steward.platform.inputs import Text
from steward.settings_providers import ModelInfo


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"title": "Planning the week"}]})  # fmt: skip

    title: Text = Field(default="", max_length=200)


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    title: Text = Field(max_length=200)


class ConversationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    created_at: datetime
    updated_at: datetime


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Text | None = Field(default=None, max_length=1000)
    schema_: dict[str, Any] = Field(alias="schema", description="a JSON Schema (2020-12)")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format` for a JSON Schema result."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"content": "add todo: call Ada about the launch", "background": False}]})  # fmt: skip

    content: Text = Field(min_length=1, max_length=32_000)
    provider: Text | None = Field(
        default=None, max_length=64, description="default: the configured one"
    )
    model: Text | None = Field(default=None, max_length=128, description="default: the provider's")
    background: bool = Field(
        default=False, description="answer 202 at once; the run continues in a worker"
    )
    response_format: ResponseFormat | None = Field(
        default=None,
        description="a JSON Schema the answer must match: validated, with one repair round",
    )
    extra_body: dict[str, Any] | None = Field(
        default=None, max_length=16,
        description="vendor parameters the provider allows per request "
        "(its `extra_body_allowed`, e.g. `enable_thinking`); others are refused",
    )  # fmt: skip


class MessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    run_id: uuid.UUID | None = None
    created_at: datetime


class UsageRead(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = Field(default=0, description="of the prompt's, read from the "
                               "provider's cache (as the provider reports them)")  # fmt: skip
    reasoning_tokens: int = Field(default=0, description="of the completion's, spent reasoning")
    cost: float | None = Field(default=None, description="at the model's configured prices; "
                               "null: no prices configured")  # fmt: skip
    currency: str | None = None


class Citation(BaseModel):
    """A source the answer cites as `[index]`: a chunk of a knowledge document."""

    index: int
    document_id: uuid.UUID
    chunk_id: uuid.UUID
    title: str
    snippet: str


class RunRead(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    status: str
    background: bool
    provider: str
    model: str
    offline: bool
    prompt_name: str
    prompt_version: int
    usage: UsageRead
    attempts: int
    error: dict[str, Any] | None
    citations: list[Citation] = Field(description="sources the answer cited, by `[index]`")
    reasoning: str | None = Field(
        default=None, description="a thinking model's reasoning before its answer (not part of it)"
    )
    created_at: datetime
    started_at: datetime | None
    first_token_at: datetime | None
    finished_at: datetime | None
    message: MessageRead | None = Field(default=None, description="the final answer, once there")
    job_id: str | None = Field(
        default=None,
        description="on a background run's 202: its job (`GET /api/v1/jobs/{job_id}`)",
    )


class Reply(BaseModel):
    """A whole answer, for clients that do not stream."""

    run: RunRead
    messages: list[MessageRead] = Field(description="what the run added, in order")


class PromptCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_.\-]+$")
    template: Text = Field(min_length=1, max_length=20_000)
    variables: list[Annotated[Text, Field(max_length=64)]] = Field(
        default_factory=list, max_length=20
    )
    activate: bool = False


class PromptRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: int
    template: str
    variables: list[str]
    active: bool
    created_by: uuid.UUID | None
    created_at: datetime


class UsageCounts(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = Field(description="of the prompt tokens, read from the provider's cache")
    reasoning_tokens: int = Field(description="of the completion tokens, spent reasoning")
    cost: float = Field(description="at the configured prices; 0 where none are set")

    @field_validator("cost", mode="before")
    @classmethod
    def _decimal(cls, value: object) -> object:
        return float(value) if isinstance(value, Decimal) else value


class UsageDayRead(UsageCounts):
    day: date
    api_key_id: uuid.UUID | None = Field(description="null: used while signed in, not by a key")


class UsageReport(BaseModel):
    items: list[UsageDayRead] = Field(description="per day and API key, newest day first")
    currency: str | None = Field(description="of every cost; null: no prices configured")
    today_total_tokens: int
    today_cost: float
    daily_quota_per_user: int | None = Field(description="tokens per UTC day; null: no quota")
    daily_quota_per_key: int | None
    remaining_today: int | None = Field(
        description="tokens left today for the user; null: no quota"
    )
    daily_cost_quota_per_user: float | None = Field(description="spend per UTC day; null: none")
    daily_cost_quota_per_key: float | None
    remaining_cost_today: float | None = Field(
        description="spend left today for the user; null: no cost quota"
    )


class UserUsageRead(UsageCounts):
    day: date
    user_id: uuid.UUID
    email: str


class UsageDayTotal(UsageCounts):
    day: date
    users: int = Field(description="users who used the assistant that day")


class AdminUsageReport(BaseModel):
    currency: str | None = Field(description="of every cost; null: no prices configured")
    days: list[UsageDayTotal] = Field(description="every user together, newest day first")
    users: list[UserUsageRead] = Field(
        description="per day and user (API keys together), newest day first, then the most "
        "tokens; at most `limit` rows"
    )


class ModelRead(ModelInfo):
    """A model runs may use (`provider` and `model` in a message), from configuration."""

    default: bool = Field(description="used when a message names no provider or model")
