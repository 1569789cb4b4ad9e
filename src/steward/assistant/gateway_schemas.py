"""The `/v1` gateway's request bodies, in OpenAI's Chat Completions and Embeddings shapes,
held to what those APIs themselves require (a malformed one is the caller's 400, not a
provider's error)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steward.platform.inputs import Int32, Int64, Text


class ChatMessage(BaseModel):
    """One message, held to what the Chat Completions API itself requires of each role, so
    that a malformed one is the caller's 400 rather than a provider's error."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None

    @model_validator(mode="after")
    def _role_requirements(self) -> ChatMessage:
        extra = self.model_extra or {}
        if self.role == "assistant":
            if self.content is None and not extra.get("tool_calls"):
                raise ValueError("an assistant message needs content or tool_calls")
        elif self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not isinstance(extra.get("tool_call_id"), str):
            raise ValueError("a tool message needs tool_call_id")
        return self


# Chat Completions parameters this gateway accepts and does not pass on (it answers one
# choice, without log-probabilities); any other unknown field must be a vendor parameter the
# model's provider allows (`extra_body_allowed`), or the request is refused naming it.
IGNORED_PARAMETERS = frozenset({
    "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs", "user",
    "parallel_tool_calls", "service_tier", "store", "metadata", "modalities", "prediction",
    "reasoning_effort", "functions", "function_call", "safety_identifier", "prompt_cache_key",
})  # fmt: skip


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=128, examples=["offline"])
    messages: list[ChatMessage] = Field(min_length=1, max_length=2000)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: Any = None
    max_tokens: Int32 | None = Field(default=None, ge=1)
    max_completion_tokens: Int32 | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: Int64 | None = None
    n: Literal[1] | None = None
    response_format: dict[str, Any] | None = Field(
        default=None, description="passed to the provider as given (json_schema, json_object)"
    )


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128, examples=["wordllama-l2-supercat-256"])
    input: (
        Annotated[Text, Field(min_length=1, max_length=32_000)]
        | Annotated[
            list[Annotated[Text, Field(min_length=1, max_length=32_000)]],
            Field(min_length=1, max_length=2048),
        ]
    ) = Field(description="a text or a list of texts (token arrays are not accepted)")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Int32 | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
