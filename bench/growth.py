"""Costs as data grows: the hot todo reads on an empty database, then on the same database
holding 1,000,000 more todos of 10,000 more users, through the same API process in the same
run; with the query plans PostgreSQL chose for each, both times.

The near cache is off (CACHE_ENABLED=false) so that every request reaches PostgreSQL: this
measures the queries, not the cache. The database is created for the run and dropped after.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from typing import Any

import anyio
import asyncpg
import httpx
from tests.engines import EngineSet, create_database, drop_database

from bench.run import PYTHON, Server, free_port, seed_user, serve, wrk

# The statements the todo service sends for these reads (todos/service.py: `_filtered`,
# keyset order `created_at DESC, id DESC`, one row more than the page to know if there is a
# next one), for EXPLAIN; the plans show which index answers each.
PLANS = {
    "list": "SELECT * FROM todos WHERE owner_id = $1 ORDER BY created_at DESC, id DESC LIMIT 21",
    "list, open only": "SELECT * FROM todos WHERE owner_id = $1 AND done IS false "
    "ORDER BY created_at DESC, id DESC LIMIT 21",
    "list, page 2": "SELECT * FROM todos WHERE owner_id = $1 AND (created_at, id) < "
    "(now(), '00000000-0000-0000-0000-000000000000'::uuid) "
    "ORDER BY created_at DESC, id DESC LIMIT 21",
    "read one": "SELECT * FROM todos WHERE id = $2 AND owner_id = $1",
}


def _sync_url(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _load(url: str, users: int, per_user: int) -> float:
    """`users` users with `per_user` todos each, in SQL (the API would take an hour)."""
    started = time.monotonic()
    conn = await asyncpg.connect(_sync_url(url))
    try:
        await conn.execute(
            "INSERT INTO users (id, email, password_hash) SELECT gen_random_uuid(), "
            "'grow-' || i || '@example.com', '!' FROM generate_series(1, $1) AS i",
            users,
        )
        await conn.execute(
            "INSERT INTO todos (id, owner_id, title, priority, tags, done, created_at, updated_at) "
            "SELECT gen_random_uuid(), u.id, 'todo ' || g, g % 4, ARRAY['bench'], g % 3 = 0, "
            "now() - g * interval '1 minute', now() "
            "FROM users AS u CROSS JOIN generate_series(1, $1) AS g "
            "WHERE u.email LIKE 'grow-%'",
            per_user,
        )
        await conn.execute("ANALYZE users; ANALYZE todos")
    finally:
        await conn.close()
    return time.monotonic() - started


async def _plans(url: str, owner: str, todo: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(_sync_url(url))
    try:
        found = {}
        for name, sql in PLANS.items():
            args: list[Any] = [uuid.UUID(owner)] + ([uuid.UUID(todo)] if "$2" in sql else [])
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}", *args)
            found[name] = [row[0] for row in rows]
        return found
    finally:
        await conn.close()


async def _count(url: str) -> int:
    conn = await asyncpg.connect(_sync_url(url))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM todos"))
    finally:
        await conn.close()


def _measure(base: str, paths: dict[str, str], headers: dict[str, str], rounds: int,
             duration: int) -> dict[str, dict[str, float]]:  # fmt: skip
    for path in paths.values():  # warm-up: pools, plans, the page cache
        wrk(base + path, connections=20, duration=2, headers=headers)
    samples: dict[str, list[Any]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, path in paths.items():
            samples[name].append(wrk(base + path, connections=20, duration=duration,
                                     headers=headers))  # fmt: skip
    return {
        name: {
            "rps": statistics.median(r.rps for r in results),
            "p50_ms": statistics.median(r.p50_ms for r in results),
            "p99_ms": statistics.median(r.p99_ms for r in results),
            "errors": sum(r.errors for r in results),
        }
        for name, results in samples.items()
    }


def run(engines: EngineSet, steward_env: dict[str, str], *, rounds: int, duration: int,
        users: int, per_user: int) -> dict[str, Any]:  # fmt: skip
    from steward.platform import migrations

    name = f"steward_growth_{os.getpid()}"
    url = anyio.run(create_database, engines.database_url, name)
    try:
        migrations.upgrade(url)
        env = {**steward_env, "DATABASE_URL": url, "CACHE_ENABLED": "false"}
        port = free_port()
        server = Server("steward-growth", [PYTHON, "-m", "steward", "api", "--port", str(port)],
                        env, port)  # fmt: skip
        with serve(server):
            token = seed_user(server.base)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=server.base, headers=headers, timeout=30) as http:
                page = http.get("/api/v1/todos?limit=20").json()
                owner = http.get("/api/v1/users/me").json()["id"]
            todo = page["items"][0]["id"]
            paths = {
                "list": "/api/v1/todos?limit=20",
                "list, open only": "/api/v1/todos?limit=20&done=false",
                "list, page 2": f"/api/v1/todos?limit=20&cursor={page['next_cursor']}",
                "read one": f"/api/v1/todos/{todo}",
            }
            empty = _measure(server.base, paths, headers, rounds, duration)
            empty_plans = anyio.run(_plans, url, owner, todo)
            load_s = anyio.run(_load, url, users, per_user)
            rows = anyio.run(_count, url)
            loaded = _measure(server.base, paths, headers, rounds, duration)
            loaded_plans = anyio.run(_plans, url, owner, todo)
    finally:
        anyio.run(drop_database, engines.database_url, name)
    return {"empty": empty, "loaded": loaded, "plans_empty": empty_plans,
            "plans_loaded": loaded_plans, "rows": rows, "users": users + 1, "load_s": load_s,
            "rounds": rounds, "duration": duration}  # fmt: skip


def markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        f"Same API process (one uvicorn worker, near cache off), same run: first with the bench "
        f"user's 50 todos alone, then with **{results['rows']:,} todos of "
        f"{results['users']:,} users** (loaded in SQL in {results['load_s']:.0f} s, then "
        f"ANALYZE). wrk, 20 connections, {results['rounds']} rounds of {results['duration']} s, "
        "medians.",
        "",
        "| read | empty req/s | loaded req/s | empty p50 / p99 ms | loaded p50 / p99 ms | "
        "**p99 loaded / empty** | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, empty in results["empty"].items():
        loaded = results["loaded"][name]
        lines.append(
            f"| {name} | {empty['rps']:,.0f} | {loaded['rps']:,.0f} | "
            f"{empty['p50_ms']:.2f} / {empty['p99_ms']:.2f} | "
            f"{loaded['p50_ms']:.2f} / {loaded['p99_ms']:.2f} | "
            f"**{loaded['p99_ms'] / empty['p99_ms']:.2f}** | "
            f"{empty['errors'] + loaded['errors']} |"
        )
    lines += ["", "Plans with the data loaded (`EXPLAIN (ANALYZE, BUFFERS)`):", ""]
    for name, plan in results["plans_loaded"].items():
        lines += [f"- {name}:", "", "  ```", *(f"  {line}" for line in plan), "  ```"]
    return lines
