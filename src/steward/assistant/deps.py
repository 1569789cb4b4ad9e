"""Dependencies of the assistant API: who may chat, ownership checks, and its rate limit."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Path, Request

from steward.accounts.deps import Principal, requires
from steward.assistant import service
from steward.assistant.models import Conversation
from steward.assistant.runner import ActiveRuns
from steward.platform.deps import Session, resources_of
from steward.platform.ratelimit import enforce

AssistantUser = Annotated[Principal, Depends(requires("assistant"))]
ConversationId = Annotated[uuid.UUID, Path(description="the conversation's id")]


def user_id_of(principal: Principal) -> uuid.UUID:
    assert principal.user_id is not None  # `requires` guarantees a user behind the call
    return principal.user_id


async def owned_conversation(
    conversation_id: ConversationId, principal: AssistantUser, session: Session
) -> Conversation:
    """The caller's conversation; anyone else's is a 404, as if it did not exist."""
    return await service.get_conversation(
        session, owner_id=user_id_of(principal), conversation_id=conversation_id
    )


OwnedConversation = Annotated[Conversation, Depends(owned_conversation)]


async def limit_assistant(request: Request, principal: AssistantUser) -> None:
    """Runs cost money: a tighter limit per user (or API key) than the general one."""
    resources = resources_of(request)
    if not resources.settings.rate_limit_enabled:
        return
    key = f"key:{principal.api_key_id}" if principal.api_key_id else f"user:{principal.user_id}"
    decision = await resources.limiter.hit(resources.policies.assistant, key)
    if decision.checked:
        request.scope.setdefault("state", {})["response_headers"] = decision.headers()
    enforce(decision)


AssistantLimited = Depends(limit_assistant)


async def active_runs(request: Request) -> ActiveRuns:
    runs: ActiveRuns = request.app.state.active_runs
    return runs


Runs = Annotated[ActiveRuns, Depends(active_runs)]
