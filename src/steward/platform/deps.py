"""FastAPI dependencies for platform resources, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import HTTPConnection

from steward.platform.resources import Resources
from steward.settings import Settings

# Every dependency here is `async def`, even when it awaits nothing: FastAPI runs plain
# `def` dependencies in its thread pool, a thread hop per call that caps throughput.


def resources_of(connection: HTTPConnection) -> Resources:
    resources: Resources = connection.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    return resources_of(request)


async def get_settings(request: Request) -> Settings:
    return resources_of(request).settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session and transaction per request, committed before the response is sent;
    events queued during it are published once it has committed."""
    async with resources_of(request).transaction() as session:
        yield session


AppSettings = Annotated[Settings, Depends(get_settings)]
# scope="function": commit (or roll back) as soon as the endpoint returns, so a failed
# commit becomes an error response instead of a 2xx for data that was never saved.
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
