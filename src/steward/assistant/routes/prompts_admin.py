"""The prompt admin API: versions of a system prompt, activation and rollback (admin)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, status

from steward.accounts.deps import Admin
from steward.accounts.limits import RateLimited
from steward.assistant import prompts
from steward.assistant.schemas import PromptCreate, PromptRead
from steward.platform.api import API_V1
from steward.platform.deps import Session
from steward.platform.inputs import Int32, Text

router = APIRouter(prefix=f"{API_V1}/admin/prompts", tags=["admin"], dependencies=[RateLimited])

PromptName = Annotated[Text, Path(max_length=64, description="the prompt's name")]
PromptVersion = Annotated[Int32, Path(description="a version number of the prompt")]


@router.get("/{name}", summary="Every version of a prompt, newest first (admin)")
async def prompt_versions(name: PromptName, _: Admin, session: Session) -> list[PromptRead]:
    return [PromptRead.model_validate(r) for r in await prompts.versions(session, name=name)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=PromptRead,
             summary="Add a prompt version; `activate` puts it in use (admin)")  # fmt: skip
async def create_prompt(body: PromptCreate, principal: Admin, session: Session) -> Any:
    return await prompts.create(
        session, name=body.name, template=body.template, variables=body.variables,
        created_by=principal.user_id, activate=body.activate,
    )  # fmt: skip


@router.post("/{name}/versions/{version}/activate", response_model=PromptRead,
             summary="Make a version the active one (admin)")  # fmt: skip
async def activate_prompt(
    name: PromptName, version: PromptVersion, _: Admin, session: Session
) -> Any:
    return await prompts.activate(session, name=name, version=version)


@router.post("/{name}/rollback", response_model=PromptRead,
             summary="Activate the version before the active one (admin)",
             responses={409: {"description": "no active version, or none before it"}})  # fmt: skip
async def rollback_prompt(name: PromptName, _: Admin, session: Session) -> Any:
    return await prompts.rollback(session, name=name)
