"""Conversations and their messages (scope assistant; another user's are a 404)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, status

from steward.accounts.deps import CurrentUserId
from steward.accounts.limits import RateLimited
from steward.assistant import service
from steward.assistant.deps import AssistantUser, OwnedConversation
from steward.assistant.schemas import (
    ConversationCreate,
    ConversationRead,
    ConversationUpdate,
    MessageRead,
)
from steward.platform.api import API_V1
from steward.platform.deps import Session
from steward.platform.pagination import Cursor, Limit, Page, invalid_cursor

router = APIRouter(prefix=f"{API_V1}/assistant", tags=["assistant"], dependencies=[RateLimited])

# A message's `seq` (bigint): at most 18 digits always fit.
MESSAGE_CURSOR = re.compile(r"^[0-9]{1,18}$")


@router.post("/conversations", status_code=status.HTTP_201_CREATED, response_model=ConversationRead,
             summary="Start a conversation (scope assistant)")  # fmt: skip
async def create_conversation(
    body: ConversationCreate, _: AssistantUser, owner_id: CurrentUserId, session: Session
) -> Any:
    return await service.create_conversation(session, owner_id=owner_id, title=body.title)


@router.get("/conversations", summary="Own conversations, newest first (scope assistant)")
async def list_conversations(
    _: AssistantUser,
    owner_id: CurrentUserId,
    session: Session,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> Page[ConversationRead]:
    rows, next_cursor = await service.list_conversations(
        session, owner_id=owner_id, limit=limit, cursor=cursor
    )
    return Page(items=[ConversationRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/conversations/{conversation_id}", response_model=ConversationRead,
            summary="One own conversation (scope assistant)")  # fmt: skip
async def get_conversation(conversation: OwnedConversation) -> Any:
    return conversation


@router.patch("/conversations/{conversation_id}", response_model=ConversationRead,
              summary="Rename an own conversation (scope assistant)")  # fmt: skip
async def rename_conversation(
    conversation: OwnedConversation, body: ConversationUpdate, session: Session
) -> Any:
    return await service.rename_conversation(session, conversation=conversation, title=body.title)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT,
               summary="Delete an own conversation and its runs (scope assistant)")  # fmt: skip
async def delete_conversation(conversation: OwnedConversation, session: Session) -> None:
    await service.delete_conversation(session, conversation=conversation)


@router.get("/conversations/{conversation_id}/messages",
            summary="A conversation's messages, oldest first (scope assistant)")  # fmt: skip
async def list_messages(
    conversation: OwnedConversation,
    session: Session,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[MessageRead]:
    after = None
    if cursor is not None:
        if not MESSAGE_CURSOR.match(cursor):
            raise invalid_cursor()
        after = int(cursor)
    rows = await service.list_messages(
        session, conversation_id=conversation.id, limit=limit + 1, after=after
    )
    next_cursor = str(rows[limit - 1].seq) if len(rows) > limit else None
    return Page(
        items=[MessageRead.model_validate(r) for r in rows[:limit]], next_cursor=next_cursor
    )
