"""What a run will do, decided before it starts: its provider and model, its prompt, and that
the message fits the token budget. A `Plan` names everything by id, so any process can
execute it; `Preloaded` is what an interactive run's planning already read."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from steward.assistant import prompts, tokens, tools
from steward.assistant.providers import Provider
from steward.assistant.resilience import Providers
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
        )


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


def input_budget(provider: Provider) -> int:
    """Tokens a request may spend on its prompt: the context minus the reply's share."""
    return provider.config.context_window - provider.config.max_output_tokens


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
    budget = input_budget(provider) - tokens.count_tools(tool_schemas, model)
    needed = tokens.count_messages([system, {"role": "user", "content": content}], model)
    if needed > budget:
        raise UnprocessableContent(
            f"the message needs about {needed} tokens with the system prompt; "
            f"{provider.name}/{model} allows {budget} for input",
            errors=[{"loc": ["body", "content"], "msg": "too many tokens", "type": "too_long"}],
        )
