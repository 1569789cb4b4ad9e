"""Reloads and restarts under load: what clients see.

- gunicorn `HUP` with the deployment's configuration (deploy/gunicorn.conf.py: the app
  preloaded in the master, workers that drain what they accepted) and, in the same run, with
  what it replaced (each worker importing the app itself, uvicorn-worker's plain worker):
  the longest and p99 wait of /health in the seconds around each reload, failed requests and
  requests retried on a new connection (the kept-alive one closed before any answer), over
  several reloads;
- the rolling restart behind nginx (deploy/systemd/rolling-restart.sh) when nginx is here.

The load: 6 clients in a loop of GET /health, GET /api/v1/todos, POST /api/v1/todos."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
from tests.deploy.serving import (
    apply_load,
    gunicorn_env,
    start_gunicorn,
    stop_gunicorn,
    wait_ready,
    workers_of,
)
from tests.factories import make_account

ROOT = Path(__file__).resolve().parents[1]
BEFORE = """# gunicorn as deployed before: every worker imports the app itself
exec(open("deploy/gunicorn.conf.py").read())
preload_app = False
worker_class = "uvicorn_worker.UvicornWorker"
"""


async def _hups(base: str, master: int, token: str, reloads: int) -> dict[str, Any]:
    waits, failed, retried, answered, spans = [], 0, 0, 0, []
    for _ in range(reloads):
        stop = asyncio.Event()
        load = asyncio.create_task(apply_load(base, token, stop))
        await asyncio.sleep(1.0)
        before = workers_of(master)
        started = time.monotonic()
        os.kill(master, signal.SIGHUP)
        while True:
            now = workers_of(master)
            if len(now) == len(before) and not now & before:
                break
            await asyncio.sleep(0.02)
        spans.append(time.monotonic() - started)
        # Until the new workers answer: a reload that leaves nobody accepting shows here.
        await asyncio.sleep(12.0)
        stop.set()
        result = await load
        waits.append(result.health_max_s)
        failed += len(result.failures)
        retried += result.retried
        answered += result.answered
    return {"max_wait_s": waits, "failed": failed, "retried": retried, "answered": answered,
            "replaced_in_s": spans}  # fmt: skip


async def _variant(engines: Any, config: Path, out: Path, reloads: int) -> dict[str, Any]:
    from tests.live import free_port

    port = free_port()
    env = gunicorn_env(engines, port, out / f"metrics-{port}")
    log = out / f"reload-{config.stem}.log"
    process = start_gunicorn(env, log, str(config))
    try:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_ready, base, process, log)
        async with httpx.AsyncClient(base_url=base) as http:
            account = await make_account(http)
        return await _hups(base, process.pid, account.access_token, reloads)
    finally:
        stop_gunicorn(process)


def run(engines: Any, out: Path, reloads: int = 3) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    before = out / "gunicorn-before.conf.py"
    before.write_text(BEFORE)
    results = {}
    for name, config in (("deployed", ROOT / "deploy" / "gunicorn.conf.py"), ("before", before)):
        results[name] = asyncio.run(_variant(engines, config, out, reloads))
    return results


def markdown(results: dict[str, Any], reloads: int) -> list[str]:
    lines = [
        f"gunicorn `HUP` under load, {reloads} reloads per configuration, 2 workers, direct "
        "(no proxy). Longest /health wait per reload, and its median:",
        "",
        "| configuration | longest /health wait per reload (s) | median | failed | retried | "
        "answered | workers replaced in (s, median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        waits = ", ".join(f"{w:.3f}" for w in r["max_wait_s"])
        lines.append(
            f"| {name} | {waits} | {statistics.median(r['max_wait_s']):.3f} | {r['failed']} | "
            f"{r['retried']} | {r['answered']} | {statistics.median(r['replaced_in_s']):.2f} |"
        )
    deployed, before = results["deployed"], results["before"]
    ratio = statistics.median(before["max_wait_s"]) / max(
        statistics.median(deployed["max_wait_s"]), 1e-6
    )
    lines += ["", f"Longest wait, before / deployed (medians): {ratio:.0f}x."]
    return lines
