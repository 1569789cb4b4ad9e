"""What a run will do, decided before it starts: its provider and model, its prompt, and that
the message fits the token budget. A `Plan` names everything by id, so any process can
execute it; `Preloaded` is what an interactive run's planning already read."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from steward.assistant import prompts, structured, tokens, tools
from steward.assistant.providers import Provider
from steward.assistant.resilience import Providers
from steward.assistant.schemas import ResponseFormat
from steward.platform.errors import UnprocessableContent


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run needs to execute, in any process: ids and names, nothing bound to a session."""

    run_id: uuid.UUID
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    scopes: frozenset[str]
    user_name: str
    provider: str
    model: str
    prompt_name: str
    # OpenAI's `response_format` (a JSON Schema result) and the request's vendor parameters.
    response_format: dict[str, Any] | None = None
    extra_body: dict[str, Any] | None = None

    def caller(self) -> tools.Caller:
        return tools.Caller(user_id=self.user_id, scopes=self.scopes)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": str(self.run_id),
            "conversation_id": str(self.conversation_id),
            "user_id": str(self.user_id),
            "api_key_id": str(self.api_key_id) if self.api_key_id else None,
            "scopes": sorted(self.scopes),
            "user_name": self.user_name,
            "provider": self.provider,
            "model": self.model,
            "prompt_name": self.prompt_name,
            "response_format": self.response_format,
            "extra_body": self.extra_body,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(
            run_id=uuid.UUID(data["run_id"]),
            conversation_id=uuid.UUID(data["conversation_id"]),
            user_id=uuid.UUID(data["user_id"]),
            api_key_id=uuid.UUID(data["api_key_id"]) if data.get("api_key_id") else None,
            scopes=frozenset(data["scopes"]),
            user_name=data["user_name"],
            provider=data["provider"],
            model=data["model"],
            prompt_name=data["prompt_name"],
            response_format=data.get("response_format"),
            extra_body=data.get("extra_body"),
        )


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends a message: what a run acts as (its tools get these scopes)."""

    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    scopes: frozenset[str]
    name: str


@dataclass(frozen=True, slots=True)
class Preloaded:
    """What an interactive run's planning already read, so its task need not read it again."""

    prompt: prompts.ActivePrompt
    history: list[dict[str, Any]]


def choose_provider(
    providers: Providers, *, name: str | None, model: str | None
) -> tuple[Provider, str]:
    provider = providers.get(name)
    if provider is None:
        raise UnprocessableContent(
            f"unknown provider {name!r}; available: {providers.names()}",
            errors=[{"loc": ["body", "provider"], "msg": "unknown provider", "type": "value"}],
        )
    allowed = [provider.config.model, *provider.config.models]
    if model is not None and model not in allowed:
        raise UnprocessableContent(
            f"model {model!r} is not offered by {provider.name}; available: {allowed}",
            errors=[{"loc": ["body", "model"], "msg": "unknown model", "type": "value"}],
        )
    return provider, model or provider.config.model


MAX_EXTRA_BODY_BYTES = 4096


def check_extra_body(provider: Provider, extra_body: dict[str, Any]) -> None:
    """Refuse (422, naming them) vendor parameters the provider does not allow per request."""
    allowed = provider.config.extra_body_allowed
    unknown = sorted(key[:64] for key in extra_body if key not in allowed)
    if unknown:
        raise UnprocessableContent(
            f"{provider.name} does not accept {unknown} per request; allowed: {sorted(allowed)}",
            errors=[{"loc": ["body", "extra_body", key], "msg": "not allowed", "type": "value"}
                    for key in unknown],
        )  # fmt: skip
    try:
        size = len(orjson.dumps(extra_body))
    except orjson.JSONEncodeError:  # nested past the encoder's limit (255 levels)
        size = MAX_EXTRA_BODY_BYTES + 1
    if size > MAX_EXTRA_BODY_BYTES:
        raise UnprocessableContent(
            f"extra_body is over {MAX_EXTRA_BODY_BYTES} bytes or nests too deep",
            errors=[{"loc": ["body", "extra_body"], "msg": "too long", "type": "too_long"}],
        )


def checked_response_format(
    provider: Provider, model: str, wanted: ResponseFormat | None
) -> dict[str, Any] | None:
    """The run's `response_format` as sent on, once the model can give it and its schema is
    one this service validates against (422 otherwise, saying why)."""
    if wanted is None:
        return None
    if provider.config.spec(provider.name, model).structured_output == "none":
        raise UnprocessableContent(
            f"{provider.name}/{model} does not give structured output",
            errors=[{"loc": ["body", "response_format"], "msg": "not supported by the model",
                     "type": "value"}],
        )  # fmt: skip
    structured.check_schema(wanted.json_schema.schema_)
    return wanted.model_dump(by_alias=True, exclude_none=True)


def input_budget(provider: Provider, model: str) -> int:
    """Tokens a request to `model` may spend on its prompt: the context minus the reply's
    share."""
    window, output = provider.config.limits(model)
    return window - output


def check_fits(
    content: str,
    *,
    prompt: prompts.ActivePrompt,
    user_name: str,
    scopes: frozenset[str],
    provider: Provider,
    model: str,
    max_input_tokens: int,
) -> None:
    """Refuse (422, stating the limit) a message that cannot fit, before any provider call."""
    single = tokens.count_text(content, model)
    if single > max_input_tokens:
        raise UnprocessableContent(
            f"the message is about {single} tokens; the limit is {max_input_tokens}",
            errors=[{"loc": ["body", "content"], "msg": "too many tokens", "type": "too_long"}],
        )
    system = {"role": "system", "content": prompt.render(user_name=user_name)}
    tool_schemas = [tool.schema() for tool in tools.available(scopes)]
    budget = input_budget(provider, model) - tokens.count_tools(tool_schemas, model)
    needed = tokens.count_messages([system, {"role": "user", "content": content}], model)
    if needed > budget:
        raise UnprocessableContent(
            f"the message needs about {needed} tokens with the system prompt; "
            f"{provider.name}/{model} allows {budget} for input",
            errors=[{"loc": ["body", "content"], "msg": "too many tokens", "type": "too_long"}],
        )
