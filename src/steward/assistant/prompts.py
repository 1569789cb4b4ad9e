"""Versioned system prompts: every change is a new numbered version; one version per name is
active; each run records the version it used. Templates use `$variable` placeholders."""

from __future__ import annotations

import string
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant.models import PromptTemplate
from steward.platform.cache import Cache
from steward.platform.errors import Conflict, NotFound, UnprocessableContent
from steward.platform.transactions import after_commit

KNOWN_VARIABLES = {
    "user_name": "the user's display name (or email)",
    "today": "today's date, UTC, ISO 8601",
}
BUILTIN_VERSION = 0
BUILTIN_TEMPLATE = (
    "You are Steward's assistant for $user_name. Today is $today (UTC). "
    "You can list, create, update and complete the user's todos with the tools provided; "
    "use them rather than guessing, and answer briefly."
)


@dataclass(frozen=True, slots=True)
class ActivePrompt:
    name: str
    version: int
    template: str

    def render(self, *, user_name: str, now: datetime | None = None) -> str:
        today = (now or datetime.now(UTC)).date().isoformat()
        return string.Template(self.template).safe_substitute(user_name=user_name, today=today)


def _check(template: str, variables: list[str]) -> None:
    unknown = sorted(set(variables) - KNOWN_VARIABLES.keys())
    if unknown:
        raise UnprocessableContent(
            f"unknown variables {unknown}; known: {sorted(KNOWN_VARIABLES)}",
            errors=[{"loc": ["body", "variables"], "msg": "unknown variable", "type": "value"}],
        )
    parsed = string.Template(template)
    if not parsed.is_valid():
        raise UnprocessableContent(
            "the template has a malformed placeholder; write $name or ${name}, and $$ for $",
            errors=[{"loc": ["body", "template"], "msg": "malformed", "type": "value"}],
        )
    undeclared = sorted(set(parsed.get_identifiers()) - set(variables))
    if undeclared:
        raise UnprocessableContent(
            f"the template uses undeclared variables {undeclared}",
            errors=[{"loc": ["body", "template"], "msg": "undeclared variable", "type": "value"}],
        )


async def active(session: AsyncSession, *, name: str, cache: Cache | None = None) -> ActivePrompt:
    """The active version of `name`, else the built-in prompt (version 0). Read through
    `cache` when given: every interactive run needs it before its provider call."""

    async def load() -> dict[str, Any]:
        row = (
            await session.execute(
                select(PromptTemplate).where(PromptTemplate.name == name, PromptTemplate.active)
            )
        ).scalar_one_or_none()
        if row is None:
            return {"name": name, "version": BUILTIN_VERSION, "template": BUILTIN_TEMPLATE}
        return {"name": row.name, "version": row.version, "template": row.template}

    if cache is None:
        return ActivePrompt(**await load())
    found = await cache.get_or_compute(_namespace(name), "active", load, ttl_s=300, kind="prompt")
    return ActivePrompt(**found)


def _namespace(name: str) -> str:
    return f"prompt:{name}"


async def versions(session: AsyncSession, *, name: str) -> list[PromptTemplate]:
    query = select(PromptTemplate).where(PromptTemplate.name == name)
    return list((await session.execute(query.order_by(PromptTemplate.version.desc()))).scalars())


async def _lock(session: AsyncSession, name: str) -> None:
    # Versions of one name are numbered and switched one writer at a time.
    await session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})


async def create(
    session: AsyncSession,
    *,
    name: str,
    template: str,
    variables: list[str],
    created_by: uuid.UUID | None,
    activate: bool,
) -> PromptTemplate:
    _check(template, variables)
    await _lock(session, name)
    latest = (
        await session.execute(
            select(func.max(PromptTemplate.version)).where(PromptTemplate.name == name)
        )
    ).scalar_one()
    row = PromptTemplate(
        name=name,
        version=(latest or 0) + 1,
        template=template,
        variables=variables,
        created_by=created_by,
        active=False,
    )
    session.add(row)
    await session.flush()
    if activate:
        return await _activate(session, name=name, version=row.version)
    return row


async def activate(session: AsyncSession, *, name: str, version: int) -> PromptTemplate:
    await _lock(session, name)
    return await _activate(session, name=name, version=version)


async def _activate(session: AsyncSession, *, name: str, version: int) -> PromptTemplate:
    row = (
        await session.execute(
            select(PromptTemplate).where(
                PromptTemplate.name == name, PromptTemplate.version == version
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise NotFound(f"prompt {name!r} has no version {version}")
    await session.execute(
        update(PromptTemplate)
        .where(PromptTemplate.name == name, PromptTemplate.active)
        .values(active=False)
    )
    await session.flush()
    row.active = True
    await session.flush()
    after_commit(session).invalidate(_namespace(name))
    return row


async def rollback(session: AsyncSession, *, name: str) -> PromptTemplate:
    """Activate the version before the active one."""
    await _lock(session, name)
    current = await active(session, name=name)
    if current.version == BUILTIN_VERSION:
        raise Conflict(f"prompt {name!r} has no active version to roll back from")
    previous = (
        await session.execute(
            select(func.max(PromptTemplate.version)).where(
                PromptTemplate.name == name, PromptTemplate.version < current.version
            )
        )
    ).scalar_one()
    if previous is None:
        raise Conflict(
            f"version {current.version} of {name!r} is the first; nothing to roll back to"
        )
    return await _activate(session, name=name, version=previous)
