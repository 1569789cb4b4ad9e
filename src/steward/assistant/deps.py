"""Dependencies of the assistant API: who may chat, ownership checks, and its rate limit."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Path, Request

from steward.accounts.authentication import Principal
from steward.accounts.deps import CurrentUserId, requires
from steward.accounts.limits import limit
from steward.assistant import service
from steward.assistant.models import Conversation
from steward.assistant.plan import Sender
from steward.assistant.runs import ActiveRuns
from steward.assistant.streams import RunFollowers
from steward.platform.deps import Session, resources_of

AssistantUser = Annotated[Principal, Depends(requires("assistant"))]
ConversationId = Annotated[uuid.UUID, Path(description="the conversation's id")]


def sender_of(principal: Principal) -> Sender:
    """What a run started by `principal` acts as."""
    assert principal.user is not None  # `requires` guarantees a user behind the call
    return Sender(
        user_id=principal.user.id,
        api_key_id=principal.api_key_id,
        scopes=principal.scopes,
        name=principal.user.display_name or principal.user.email,
    )


async def owned_conversation(
    conversation_id: ConversationId, _: AssistantUser, owner_id: CurrentUserId, session: Session
) -> Conversation:
    """The caller's conversation; anyone else's is a 404, as if it did not exist."""
    return await service.get_conversation(
        session, owner_id=owner_id, conversation_id=conversation_id
    )


OwnedConversation = Annotated[Conversation, Depends(owned_conversation)]


async def limit_assistant(request: Request, principal: AssistantUser) -> None:
    """Runs cost money: a tighter limit per user (or API key) than the general one."""
    await limit(request, resources_of(request).policies.assistant, principal)


AssistantLimited = Depends(limit_assistant)


async def active_runs(request: Request) -> ActiveRuns:
    runs: ActiveRuns = request.app.state.active_runs
    return runs


Runs = Annotated[ActiveRuns, Depends(active_runs)]


async def run_followers(request: Request) -> RunFollowers:
    followers: RunFollowers = request.app.state.run_followers
    return followers


Followers = Annotated[RunFollowers, Depends(run_followers)]
