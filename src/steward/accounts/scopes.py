"""Roles and the scopes they grant (DESIGN §6)."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    USER = "user"
    ADMIN = "admin"


class Scope(enum.StrEnum):
    TODOS_READ = "todos:read"
    TODOS_WRITE = "todos:write"
    ASSISTANT = "assistant"
    KNOWLEDGE_READ = "knowledge:read"
    KNOWLEDGE_WRITE = "knowledge:write"
    PROFILE_WRITE = "profile:write"  # an API key that may change the account's own settings
    ADMIN = "admin"


USER_SCOPES: frozenset[str] = frozenset(s.value for s in Scope if s is not Scope.ADMIN)
ALL_SCOPES: frozenset[str] = frozenset(s.value for s in Scope)


def scopes_for(role: str) -> frozenset[str]:
    return ALL_SCOPES if role == Role.ADMIN else USER_SCOPES
