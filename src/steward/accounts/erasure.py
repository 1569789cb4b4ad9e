"""An account's data, all of it: exported as JSON (`GET /users/me/export`) and deleted
(`DELETE /users/me`), as app stores require.

"All of it" is found, not listed: every table with a foreign key to `users.id` holds rows the
account owns, and every table with a foreign key to one of those holds their children
(messages of conversations, chunks of documents...). A table added later is exported and,
through its cascading foreign key, deleted without a change here. Secrets (password and token
hashes, API key and webhook secrets) and raw bytes are left out of the export."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import Table, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from steward.accounts import hooks
from steward.accounts.models import ApiKey, LoginSession, User
from steward.accounts.service import api_key_namespace, user_namespace
from steward.platform.db import Base
from steward.platform.errors import Forbidden, ReauthenticationRequired
from steward.platform.resources import Resources
from steward.platform.security import Passwords
from steward.platform.transactions import after_commit

log = structlog.get_logger(__name__)

# A session opened this recently proves its holder just entered the password (or signed in
# with a provider) as well as a password typed now does.
FRESH_SIGN_IN = timedelta(minutes=5)
_SECRET_COLUMNS = frozenset({"password_hash", "key_hash", "token_hash", "secret", "content",
                             "lexemes", "embedding"})  # fmt: skip
_SKIPPED_TABLES = frozenset({"refresh_tokens", "idempotency_keys"})


def _owned_tables() -> list[tuple[Table, str, Table | None, str | None]]:
    """(table, its column, parent table, parent's key column) for every table that belongs
    to a user directly (parent None) or through one parent."""
    users = Base.metadata.tables["users"]
    direct: list[tuple[Table, str, Table | None, str | None]] = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            if fk.column.table is users and table.name not in _SKIPPED_TABLES:
                direct.append((table, fk.parent.name, None, None))
    owners = {entry[0] for entry in direct}
    children: list[tuple[Table, str, Table | None, str | None]] = []
    for table in Base.metadata.sorted_tables:
        if table in owners or table is users or table.name in _SKIPPED_TABLES:
            continue
        for fk in table.foreign_keys:
            if fk.column.table in owners:
                parent = next(e for e in direct if e[0] is fk.column.table)
                children.append((table, fk.parent.name, parent[0], parent[1]))
                break
    return direct + children


def _plain(value: Any) -> Any:
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return None
    return value


def _row(row: Any, table: Table) -> dict[str, Any]:
    return {c.name: _plain(row._mapping[c]) for c in table.columns if c.name not in _SECRET_COLUMNS}


async def export(session: AsyncSession, *, user_id: uuid.UUID) -> dict[str, Any]:
    users = Base.metadata.tables["users"]
    profile = (await session.execute(select(users).where(users.c.id == user_id))).one()
    data: dict[str, Any] = {"exported_at": datetime.now(UTC).isoformat(),
                            "profile": _row(profile, users)}  # fmt: skip
    for table, column, parent, parent_owner in _owned_tables():
        query = select(table)
        if parent is None:
            query = query.where(table.c[column] == user_id)
        else:
            assert parent_owner is not None
            key = next(fk.column.name for fk in table.foreign_keys if fk.parent.name == column)
            query = query.where(table.c[column].in_(
                select(parent.c[key]).where(parent.c[parent_owner] == user_id)
            ))  # fmt: skip
        rows = (await session.execute(query)).all()
        data[table.name] = [_row(row, table) for row in rows]
    return data


async def delete_account(
    session: AsyncSession, *, user_id: uuid.UUID, session_id: uuid.UUID, password: str | None,
    passwords: Passwords, resources: Resources,
) -> None:  # fmt: skip
    """Delete the account and everything it owns, if the caller proves it is its holder: the
    password, or a session opened in the last five minutes. Every credential dies with it."""
    user = await session.get(User, user_id, with_for_update=True)
    login = await session.get(LoginSession, session_id)
    if user is None or login is None:
        raise Forbidden("this session is no longer valid")
    fresh = login.created_at >= datetime.now(UTC) - FRESH_SIGN_IN
    if not fresh and not (password and await passwords.verify(password, user.password_hash)):
        raise ReauthenticationRequired(
            "confirm with your password, or sign in again and delete within five minutes"
        )
    keys = await session.execute(select(ApiKey.key_hash).where(ApiKey.user_id == user_id))
    namespaces = [user_namespace(user_id), *(api_key_namespace(h) for h in keys.scalars())]
    await hooks.user_deleted(session, user_id, resources)
    await session.execute(delete(User).where(User.id == user_id))  # cascades to all it owns
    # Cached principals of its sessions and API keys go with it.
    after_commit(session).invalidate(*namespaces)
    log.info("user.deleted", user_id=str(user_id), proof="fresh sign-in" if fresh else "password")
