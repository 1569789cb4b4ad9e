"""The unit of work: one transaction, and one queue of what happens once it has committed.

`Resources.transaction()` is the one way to open a transaction; the request's `Session`
dependency is built on it, and so is every task, tool call, run and command. Services only
`flush()`. What must wait until the data is durable goes on the session's `AfterCommit`
queue (`after_commit(session)`): live events, cache invalidations, jobs to send, and other
callbacks. The queue is flushed once after the commit and dropped on a rollback, so a
rolled-back write neither announces itself nor starts work about data that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from steward.platform.errors import StewardError

Send = Callable[[], Awaitable[None]]
_QUEUE_KEY = "steward.after_commit"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A job recorded in a transaction (jobs/service.py `enqueue`), to send once it commits."""

    job_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]


class Dispatcher(Protocol):
    """Sends committed jobs to the broker; the jobs domain provides it (jobs/outbox.py). A
    failed send is logged there: the job is recorded, and the outbox sweeper sends it."""

    async def dispatch(self, jobs: list[Dispatch]) -> None: ...


@dataclass(slots=True)
class AfterCommit:
    """What one transaction does once committed, in this order: invalidate cached reads (so a
    client that hears of a change reads it), publish live events, send jobs, run callbacks."""

    namespaces: set[str] = field(default_factory=set)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    jobs: list[Dispatch] = field(default_factory=list)
    callbacks: list[Send] = field(default_factory=list)

    def invalidate(self, *namespaces: str) -> None:
        """Move cache namespaces to new versions (platform/cache.py)."""
        self.namespaces.update(namespaces)

    def publish(self, channel: str, event: dict[str, Any]) -> None:
        """Publish `event` on a Pub/Sub channel (best effort: the change is already stored)."""
        self.events.append((channel, event))

    def enqueue(self, job: Dispatch) -> None:
        """Send a job recorded in this transaction (use jobs/service.py `enqueue`)."""
        self.jobs.append(job)

    def call(self, callback: Send) -> None:
        """Anything else that needs the commit first; its errors propagate."""
        self.callbacks.append(callback)

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.events or self.jobs or self.callbacks)


def after_commit(session: AsyncSession) -> AfterCommit:
    """The queue of `session`'s transaction."""
    queue: AfterCommit | None = session.info.get(_QUEUE_KEY)
    if queue is None:
        queue = session.info[_QUEUE_KEY] = AfterCommit()
    return queue


Flush = Callable[[AfterCommit], Awaitable[None]]
Transaction = Callable[[], AbstractAsyncContextManager[AsyncSession]]
"""What opens a unit of work (`resources.transaction`): handed to code that needs the database
only sometimes (cache misses)."""


@asynccontextmanager
async def open_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], flush: Flush
) -> AsyncIterator[AsyncSession]:
    """Commit when the block succeeds (or raises an error that `keeps_changes`), roll back
    otherwise; after a commit, `flush` the queue. Only `Resources.transaction()` calls this:
    it is the one that knows how to flush."""
    async with sessionmaker() as session:
        try:
            yield session
        except StewardError as exc:
            if exc.keeps_changes:
                await _commit(session, flush)
            else:
                session.info.pop(_QUEUE_KEY, None)
                await session.rollback()
            raise
        except BaseException:
            session.info.pop(_QUEUE_KEY, None)
            await session.rollback()
            raise
        else:
            await _commit(session, flush)


async def _commit(session: AsyncSession, flush: Flush) -> None:
    # A request that never touched the database (everything came from the cache) has
    # nothing to commit; skipping it saves SQLAlchemy's commit machinery.
    if session.in_transaction():
        await session.commit()
    queue: AfterCommit | None = session.info.pop(_QUEUE_KEY, None)
    if queue:
        await flush(queue)
