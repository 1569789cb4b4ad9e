"""Where the suite's PostgreSQL and Redis come from: the machine's, else embedded ones.

Set STEWARD_TEST_ENGINES=embedded to force the embedded engines, or STEWARD_TEST_DATABASE_URL /
STEWARD_TEST_REDIS_URL to point the suite at specific servers.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg

from steward.engines import EmbeddedEngines

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
SYSTEM_REDIS = "redis://127.0.0.1:6379"


@dataclass(frozen=True)
class EngineSet:
    database_url: str
    redis_url: str  # the suite's Redis database, flushed between tests
    kind: str

    def redis_spare(self, n: int) -> str:
        """The session's n-th spare Redis database (1: the Celery broker, 2: a broker of a
        test's own), claimed with `redis_url` so that concurrent sessions do not share it."""
        base, _, db = self.redis_url.rpartition("/")
        return f"{base}/{int(db) + n}"


# Sessions claim three consecutive Redis databases each (1-3, 4-6, ... 13-15; 0 is left to
# whatever else uses the server), so suites and xdist workers can run at the same time.
_REDIS_GROUPS = range(1, 16, 3)
_CLAIM_TTL_S = 6 * 3600


def _owner_alive(owner: bytes | None) -> bool:
    if owner is None:
        return False
    host, _, pid = owner.decode().partition(":")
    if host != socket.gethostname():
        return True  # another machine's session: its claim expires on its own
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _server(redis_url: str) -> str:
    """A Redis URL without its database number."""
    base, _, db = redis_url.rstrip("/").rpartition("/")
    return base if db.isdigit() and base.count("/") >= 2 else redis_url.rstrip("/")


@contextmanager
def _claim_redis(server: str) -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(f"{server}/0")
    me = f"{socket.gethostname()}:{os.getpid()}"
    try:
        for first in _REDIS_GROUPS:
            key = f"steward-test:claim:{first}"
            if not client.set(key, me, nx=True, ex=_CLAIM_TTL_S):
                owner = client.get(key)
                if _owner_alive(owner):
                    continue
                if client.getset(key, me) != owner:  # someone else took it over first
                    continue
                client.expire(key, _CLAIM_TTL_S)
            try:
                yield f"{server}/{first}"
            finally:
                if client.get(key) == me.encode():
                    client.delete(key)
            return
        raise RuntimeError(f"every Redis database group of {server} is claimed by a live session")
    finally:
        client.close()


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _admin_url(url: str) -> str:
    """asyncpg wants a plain postgresql:// URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_database(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


async def _create_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(_admin_url(admin_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(_admin_url(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def create_database(url: str, name: str) -> str:
    """A new, empty database `name` on the server of `url` (replacing one of that name);
    returns its URL. For tests that break their database on purpose."""
    await _drop_database(url, name)
    await _create_database(url, name)
    return _with_database(url, name)


async def drop_database(url: str, name: str) -> None:
    await _drop_database(url, name)


async def execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(_admin_url(url))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def provide_engines() -> Iterator[EngineSet]:
    """A fresh database (dropped afterwards) and a Redis database for one test session."""
    forced = os.environ.get("STEWARD_TEST_ENGINES", "")
    embedded: EmbeddedEngines | None = None
    admin_url = os.environ.get("STEWARD_TEST_DATABASE_URL")
    redis_url = os.environ.get("STEWARD_TEST_REDIS_URL")
    kind = "external"
    if forced != "embedded":
        if admin_url is None and reachable("127.0.0.1", 5432):
            admin_url, kind = SYSTEM_POSTGRES, "system"
        if redis_url is None and reachable("127.0.0.1", 6379):
            redis_url = SYSTEM_REDIS
    if admin_url is None or redis_url is None:
        embedded = EmbeddedEngines(ROOT / ".steward-test" / f"engines-{os.getpid()}")
        urls = embedded.start()
        admin_url = admin_url or urls.database_url
        redis_url = redis_url or urls.redis_url
        kind = "embedded"
    name = f"steward_test_{uuid.uuid4().hex[:10]}"
    anyio.run(_create_database, admin_url, name)
    try:
        with _claim_redis(_server(redis_url)) as claimed:
            yield EngineSet(_with_database(admin_url, name), claimed, kind)
    finally:
        anyio.run(_drop_database, admin_url, name)
        if embedded is not None:
            embedded.stop()
            shutil.rmtree(embedded.data_dir, ignore_errors=True)


async def _has_pgvector(url: str) -> bool:
    conn = await asyncpg.connect(_admin_url(url))
    try:
        return bool(
            await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
        )
    finally:
        await conn.close()


@contextmanager
def provide_vector_engines(base: EngineSet) -> Iterator[EngineSet]:
    """`base` if its PostgreSQL has pgvector, else an embedded PostgreSQL (which has it) with
    a fresh database; Redis stays `base`'s."""
    if anyio.run(_has_pgvector, base.database_url):
        yield base
        return
    embedded = EmbeddedEngines(ROOT / ".steward-test" / f"vector-engines-{os.getpid()}")
    admin_url = embedded.start().database_url
    name = f"steward_test_{uuid.uuid4().hex[:10]}"
    try:
        anyio.run(_create_database, admin_url, name)
        yield EngineSet(_with_database(admin_url, name), base.redis_url, "embedded")
    finally:
        embedded.stop()
        shutil.rmtree(embedded.data_dir, ignore_errors=True)  # a fresh cluster per session
