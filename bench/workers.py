"""Two workers against one (part of `make bench`): gunicorn with the deployment's own config
(deploy/gunicorn.conf.py), WEB_CONCURRENCY=1 then 2, each serving the cached todo list
under wrk (rounds interleaved so that the machine's noise falls on both alike), then 1,000
assistant streams spread over them by the kernel's accept."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import anyio
from tests.deploy.serving import gunicorn

from bench import streams
from bench.run import free_port, seed_user, wrk

PATH = "/api/v1/todos?limit=20"


def run(
    engines: Any, steward_env: dict[str, str], out: Path, *, rounds: int, duration: int
) -> dict[str, Any]:
    figures: dict[int, list[Any]] = {1: [], 2: []}
    for _ in range(rounds):
        for workers in (1, 2):
            port = free_port()
            with tempfile.TemporaryDirectory() as metrics:
                env = {**steward_env, "HOST": "127.0.0.1", "PORT": str(port),
                       "WEB_CONCURRENCY": str(workers), "PROMETHEUS_MULTIPROC_DIR": metrics,
                       "CELERY_BROKER_URL": engines.redis_spare(1)}  # fmt: skip
                with gunicorn(env, out / f"gunicorn-{workers}.log"):
                    base = f"http://127.0.0.1:{port}"
                    headers = {"Authorization": f"Bearer {seed_user(base)}"}
                    wrk(base + PATH, connections=50, duration=2, headers=headers)  # warm-up
                    result = wrk(base + PATH, connections=50, duration=duration, headers=headers)
            print(f"gunicorn, {workers} worker(s): {result}", flush=True)
            figures[workers].append(result)
    one, two = (statistics.median(r.rps for r in figures[w]) for w in (1, 2))
    return {
        "rounds": rounds, "duration": duration,
        "workers": {
            w: {"rps": statistics.median(r.rps for r in rs),
                "p50_ms": statistics.median(r.p50_ms for r in rs),
                "p99_ms": statistics.median(r.p99_ms for r in rs),
                "errors": sum(r.errors for r in rs), "each": [round(r.rps) for r in rs]}
            for w, rs in figures.items()
        },
        "ratio": two / one,
    }  # fmt: skip


def run_streams(
    steward_env: dict[str, str], out: Path, *, n: int, token_delay_s: float, tokens: int
) -> dict[int, dict[str, Any]]:
    """`n` staggered assistant streams (as in the Streams section) on 1 and on 2 workers."""
    results: dict[int, dict[str, Any]] = {}
    for workers in (1, 2):
        stack = streams.start_stack(
            {**steward_env}, token_delay_s=token_delay_s, tokens=tokens, free_port=free_port,
            out=out / f"streams-{workers}", workers=workers,
        )  # fmt: skip
        try:
            results[workers] = anyio.run(_streams, stack, n, tokens * token_delay_s, tokens)
        finally:
            streams.stop_stack(stack)
        print(f"{n} streams on {workers} worker(s): {results[workers]}", flush=True)
    return results


async def _streams(stack: streams.Stack, n: int, reply_s: float, tokens: int) -> dict[str, Any]:
    await streams.seed(stack, conversations=100)
    await streams.assistant_streams(stack, 100, reply_s, tokens=tokens)  # warm-up
    result = await streams.assistant_streams(stack, n, reply_s, tokens=tokens)
    return {k: v for k, v in result.items() if k != "slowest"}


def markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        f"`gunicorn -c deploy/gunicorn.conf.py` with WEB_CONCURRENCY=1 and =2, `wrk -t1 -c50 "
        f"-d{results['duration']}s` on `GET {PATH}` (the cached first page) with one user's "
        f"token, {results['rounds']} interleaved rounds, medians; wrk, PostgreSQL and Redis "
        "share the same 2 cores.",
        "",
        "| workers | req/s | p50 ms | p99 ms | errors | each round req/s |",
        "|---|---|---|---|---|---|",
    ]
    for workers, r in results["workers"].items():
        lines.append(
            f"| {workers} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['errors']} | {', '.join(f'{v:,}' for v in r['each'])} |"
        )
    lines += ["", f"**Two workers / one: {results['ratio']:.2f}.**"]
    if results.get("streams"):
        lines += [
            "",
            "1,000 assistant streams started over one reply's length (as in Streams: 100 "
            "tokens 50 ms apart, 10,000 tokens/s offered), one round after a warm-up of 100, "
            "the same gunicorn config:",
            "",
            "| workers | tokens/s delivered | added TTFT p50 / p99 ms | errors |",
            "|---|---|---|---|",
        ]
        for workers, r in results["streams"].items():
            lines.append(
                f"| {workers} | {r['tokens_per_s']:,.0f} | {r['added_p50'] * 1000:,.0f} / "
                f"{r['added_p99'] * 1000:,.0f} | {r['errors']} |"
            )
    return lines
