"""Two workers against one (part of `make bench`): gunicorn with the deployment's own config
(deploy/gunicorn.conf.py), WEB_CONCURRENCY=1 then 2, each serving the cached todo list
under wrk; rounds interleaved so that the machine's noise falls on both alike."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from tests.deploy.serving import gunicorn

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
    return lines
