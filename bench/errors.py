"""What a 500 costs the event loop: the same request served in process, first succeeding,
then failing unexpectedly (its table renamed away), in each log format. The difference is
the error path: the exception, its one log record (a short traceback, no locals) and the
problem response.

CPU time of the process per request (`time.process_time`) stands for event-loop time: the
requests run one after another, nothing else runs, and the database's own time is spent in
another process. Medians and p99 over N requests of each kind, from one run.
"""

from __future__ import annotations

import secrets
import statistics
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from asgi_lifespan import LifespanManager

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    }


async def measure(database_url: str, redis_url: str, log_format: str, n: int) -> dict[str, Any]:
    from tests.engines import create_database, drop_database, execute

    from steward.app import create_app
    from steward.platform.logging import configure_logging
    from steward.settings import Settings

    name = f"steward_bench_errors_{secrets.token_hex(4)}"
    url = await create_database(database_url, name)
    from steward.platform import migrations

    await anyio.to_thread.run_sync(migrations.upgrade, url)
    OUT.mkdir(parents=True, exist_ok=True)
    log_path = OUT / f"errors-{log_format}.log"
    with log_path.open("w") as log_file:
        configure_logging(level="INFO", json=log_format == "json", stream=log_file)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, database_url=url, redis_url=redis_url, log_format=log_format,
            rate_limit_enabled=False, cache_enabled=False,
        )  # fmt: skip
        app = create_app(settings)
        try:
            async with LifespanManager(app) as manager:
                transport = httpx.ASGITransport(app=manager.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                    email, password = "bench-errors@example.com", "correct-horse-42"
                    await http.post("/api/v1/auth/register",
                                    json={"email": email, "password": password})  # fmt: skip
                    token = (
                        await http.post(
                            "/api/v1/auth/token", data={"username": email, "password": password}
                        )
                    ).json()["access_token"]
                    headers = {"Authorization": f"Bearer {token}"}

                    async def run(expected: int) -> tuple[list[float], list[float]]:
                        cpu, wall = [], []
                        for _ in range(n):
                            c0, w0 = time.process_time(), time.perf_counter()
                            response = await http.get("/api/v1/todos?done=true", headers=headers)
                            cpu.append(time.process_time() - c0)
                            wall.append(time.perf_counter() - w0)
                            assert response.status_code == expected, response.text
                        return cpu, wall

                    await run(200)  # warm up
                    ok_cpu, ok_wall = await run(200)
                    await execute(url, "ALTER TABLE todos RENAME TO todos_gone")
                    await run(500)  # warm up the error path too
                    fail_cpu, fail_wall = await run(500)
        finally:
            configure_logging(level="INFO", json=True)
            await drop_database(database_url, name)
    lines = log_path.read_text().count("\n")
    return {
        "format": log_format,
        "ok_cpu": _summary(ok_cpu),
        "fail_cpu": _summary(fail_cpu),
        "ok_wall": _summary(ok_wall),
        "fail_wall": _summary(fail_wall),
        "log_lines_per_500": round(lines / (2 * n), 1),
    }


def report(results: list[dict[str, Any]], n: int) -> list[str]:
    lines = [
        f"Written by `make bench` (`python -m bench.run --only errors`), {n} requests of each "
        f"kind, on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 2 shared cores.",
        "",
        "`GET /api/v1/todos?done=true` in process, answered 200, then 500 (its table renamed "
        "away). CPU ms per request (the event loop's time; requests run one at a time).",
        "",
        "| log format | 200: CPU p50 / p99 | 500: CPU p50 / p99 | 500 minus 200 (p50) | "
        "log lines per 500 |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ok, fail = r["ok_cpu"], r["fail_cpu"]
        lines.append(
            f"| {r['format']} | {ok['p50']:.2f} / {ok['p99']:.2f} | "
            f"{fail['p50']:.2f} / {fail['p99']:.2f} | {fail['p50'] - ok['p50']:.2f} | "
            f"{r['log_lines_per_500']} |"
        )
    lines += [
        "",
        "Target: a 500 costs under 5 ms of event-loop time. Before this change the console "
        "format rendered tracebacks with every frame's local variables: about 15,000 lines "
        "and 4-6 s of event loop per 500 (measured on `make run`, not by this script).",
    ]
    return lines
