"""Provider configuration: one OpenAI-compatible endpoint (`ProviderConfig`, an entry of
ASSISTANT_PROVIDERS or EMBEDDING_PROVIDERS), what its models offer and cost. Apart from
settings.py, which reads the environment, because this is a concept of its own: the model
catalogue, prices and vendor parameters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator

# Request fields Steward itself decides; a provider's `extra_body` may not override them.
RESERVED_BODY_KEYS = frozenset(
    {"model", "messages", "stream", "stream_options", "tools", "tool_choice", "max_tokens",
     "max_completion_tokens", "response_format", "n"}
)  # fmt: skip


StructuredOutput = Literal["json_schema", "json_object", "prompt", "none"]


class Prices(BaseModel):
    """What a model costs, per million tokens. Cached prompt tokens (those the provider
    reports as read from its cache) cost `cached_input`, the input price when unset; the
    reasoning of a thinking model is output."""

    model_config = {"extra": "forbid"}

    input: float = Field(ge=0, le=1_000_000)
    cached_input: float | None = Field(default=None, ge=0, le=1_000_000)
    output: float = Field(ge=0, le=1_000_000)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")


class ModelSpec(BaseModel):
    """What one model offers, beside its provider's defaults (`ProviderConfig.per_model`)."""

    model_config = {"extra": "forbid"}

    context_window: int | None = Field(default=None, ge=256)
    max_output_tokens: int | None = Field(default=None, ge=1)
    reasoning: bool | None = None
    tools: bool | None = None
    images: bool | None = None
    structured_output: StructuredOutput | None = None
    prices: Prices | None = None


class ModelInfo(BaseModel):
    """A model's row in the catalogue: its spec with the provider's defaults filled in."""

    provider: str
    model: str
    context_window: int
    max_output_tokens: int
    reasoning: bool
    tools: bool
    images: bool
    structured_output: StructuredOutput
    prices: Prices | None


class ProviderConfig(BaseModel):
    """One OpenAI-compatible endpoint (OpenAI, DashScope compatible mode, Volcano Ark, vLLM,
    Ollama, ...). The key comes from `api_key`, else the file `api_key_file`, else the
    environment variable named by `api_key_env`; local servers may need none."""

    model_config = {"extra": "forbid"}

    base_url: str
    model: str
    models: list[str] = Field(default_factory=list, description="other models clients may pick")
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    api_key_env: str | None = None
    context_window: int = Field(default=8192, ge=256)
    max_output_tokens: int = Field(default=1024, ge=1)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_timeout_s: float = Field(default=30.0, gt=0)
    idle_timeout_s: float = Field(default=30.0, gt=0)
    total_timeout_s: float = Field(default=300.0, gt=0)
    max_retries: int = Field(default=3, ge=0, le=10)
    # Idle connections are dropped before the server's keep-alive ends, or a request sent on
    # one the server is closing fails (uvicorn, under vLLM, closes after 5 s).
    keepalive_s: float = Field(default=4.0, gt=0)
    max_connections: int = Field(default=1000, ge=1)
    # What its models offer (the catalogue: GET /v1/models, GET /api/v1/assistant/models);
    # `per_model` overrides these for the models it names.
    reasoning: bool = Field(default=False, description="streams reasoning before answering")
    tools: bool = Field(default=True, description="calls tools")
    images: bool = Field(default=False, description="takes images")
    structured_output: StructuredOutput = Field(
        default="json_schema",
        description="how a run's JSON Schema reaches the model: as `response_format` "
        "(json_schema), as JSON mode plus an instruction (json_object: DeepSeek), or as an "
        "instruction alone (prompt); the answer is validated here in every case; none: "
        "requests for it are refused",
    )
    prices: Prices | None = None
    per_model: dict[str, ModelSpec] = Field(default_factory=dict)
    output_limit_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens", description="OpenAI's reasoning models take only the second"
    )
    # Vendor parameters sent in the request body (`enable_thinking`, `thinking`, ...):
    # `extra_body` always, and those a request may set, by name, in `extra_body_allowed`.
    extra_body: dict[str, Any] = Field(default_factory=dict)
    extra_body_allowed: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_models(self) -> ProviderConfig:
        offered = {self.model, *self.models}
        unknown = sorted(set(self.per_model) - offered)
        if unknown:
            raise ValueError(f"per_model names models not offered: {unknown}")
        reserved = sorted(RESERVED_BODY_KEYS & {*self.extra_body, *self.extra_body_allowed})
        if reserved:
            raise ValueError(f"extra_body may not set {reserved}: Steward sets them")
        return self

    def limits(self, model: str) -> tuple[int, int]:
        """(context window, output limit) of `model`."""
        own = self.per_model.get(model)
        if own is None:
            return self.context_window, self.max_output_tokens
        return (own.context_window or self.context_window,
                own.max_output_tokens or self.max_output_tokens)  # fmt: skip

    def prices_for(self, model: str) -> Prices | None:
        own = self.per_model.get(model)
        return own.prices if own is not None and own.prices is not None else self.prices

    def spec(self, name: str, model: str) -> ModelInfo:
        """The catalogue's row for `model` (one of this provider's)."""
        own = self.per_model.get(model) or ModelSpec()
        context_window, max_output_tokens = self.limits(model)
        return ModelInfo(
            provider=name, model=model,
            context_window=context_window, max_output_tokens=max_output_tokens,
            reasoning=self.reasoning if own.reasoning is None else own.reasoning,
            tools=self.tools if own.tools is None else own.tools,
            images=self.images if own.images is None else own.images,
            structured_output=own.structured_output or self.structured_output,
            prices=self.prices_for(model),
        )  # fmt: skip

    def resolved_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        if self.api_key_env is not None:
            return os.environ.get(self.api_key_env) or None
        return None
