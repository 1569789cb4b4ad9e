"""Mixed traffic for minutes against one API process (part of `make bench`): HTTP reads and
writes, assistant streams (some left mid-answer), WebSockets that come and go, resumed run
readers. What the process holds is read when it is idle, after a warm-up of the same
traffic and again after the soak: RSS, file descriptors, sockets, event-loop tasks
(`steward_event_loop_tasks`). Whatever a request, a stream or a socket leaks shows as a
difference between the two."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

import httpx
import psutil

from bench import streams

SETTLE_S = 10.0


async def _tasks(base: str) -> int:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{base}/metrics")).text
    for line in text.splitlines():
        if line.startswith("steward_event_loop_tasks "):
            return int(float(line.split()[1]))
    return -1


async def _held(stack: streams.Stack) -> dict[str, float]:
    """What the idle process holds (after SETTLE_S for pools and timers to let go)."""
    await asyncio.sleep(SETTLE_S)
    process = psutil.Process(stack.process.pid)
    return {
        "rss_mib": process.memory_info().rss / 2**20,
        "fds": len(os.listdir(f"/proc/{stack.process.pid}/fd")),
        "sockets": len(process.net_connections(kind="inet")),
        "tasks": await _tasks(stack.base),
    }


class Counts:
    def __init__(self) -> None:
        self.http = self.runs = self.left = self.sockets = self.resumed = self.errors = 0
        self.run_ids: list[str] = []


async def _http(stack: streams.Stack, until: float, counts: Counts) -> None:
    async with httpx.AsyncClient(base_url=stack.base, headers=stack.auth, timeout=30) as http:
        n = 0
        while time.monotonic() < until:
            n += 1
            if n % 5 == 0:
                response = await http.post("/api/v1/todos", json={"title": f"soak {n}"})
                if response.status_code == 201 and n % 10 == 0:
                    todo = response.json()
                    await http.patch(f"/api/v1/todos/{todo['id']}", json={"done": True})
            else:
                response = await http.get("/api/v1/todos?limit=20")
            counts.http += 1
            counts.errors += response.status_code >= 500
            await asyncio.sleep(0.05)


async def _streams(stack: streams.Stack, until: float, counts: Counts, lane: int) -> None:
    n = 0
    while time.monotonic() < until:
        n += 1
        conversation = stack.conversations[(lane + n) % len(stack.conversations)]
        leave_after = 10 if n % 10 == 0 else None  # one run in ten is left mid-answer
        body = json.dumps({"content": f"soak {lane}.{n}"}).encode()
        tokens = 0
        try:
            async for _, event, _, data in streams.sse(
                stack.port, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
                stack.auth, body,
            ):  # fmt: skip
                if event == "run":
                    counts.run_ids.append(json.loads(data)["run_id"])
                    counts.run_ids = counts.run_ids[-50:]
                tokens += event == "token"
                if leave_after is not None and tokens >= leave_after:
                    counts.left += 1
                    break
            counts.runs += 1
        except (OSError, RuntimeError):
            counts.errors += 1


async def _sockets(stack: streams.Stack, until: float, counts: Counts) -> None:
    from websockets.asyncio.client import connect

    url = f"ws://127.0.0.1:{stack.port}/api/v1/realtime?access_token={stack.token}"
    while time.monotonic() < until:
        try:
            async with connect(url) as ws:
                counts.sockets += 1
                stay = time.monotonic() + random.uniform(2, 15)
                while time.monotonic() < min(stay, until):
                    try:
                        await asyncio.wait_for(ws.recv(), 1.0)
                    except TimeoutError:
                        continue
        except OSError:
            counts.errors += 1


async def _readers(stack: streams.Stack, until: float, counts: Counts) -> None:
    while time.monotonic() < until:
        await asyncio.sleep(1.0)
        if not counts.run_ids:
            continue
        run_id = random.choice(counts.run_ids)
        try:
            async for _, event, _, _ in streams.sse(
                stack.port, "GET", f"/api/v1/assistant/runs/{run_id}/events", stack.auth
            ):
                if event == "done":
                    break
            counts.resumed += 1
        except (OSError, RuntimeError):
            counts.errors += 1


async def _traffic(stack: streams.Stack, seconds: float) -> Counts:
    counts = Counts()
    until = time.monotonic() + seconds
    await asyncio.gather(
        *(_http(stack, until, counts) for _ in range(4)),
        *(_streams(stack, until, counts, lane) for lane in range(8)),
        *(_sockets(stack, until, counts) for _ in range(20)),
        *(_readers(stack, until, counts) for _ in range(2)),
    )
    return counts


async def run(stack: streams.Stack, *, seconds: float, warmup_s: float = 60.0) -> dict[str, Any]:
    await streams.seed(stack, conversations=20)
    await _traffic(stack, warmup_s)
    before = await _held(stack)
    samples: list[tuple[float, float]] = []
    process = psutil.Process(stack.process.pid)
    started = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append((time.monotonic() - started, process.memory_info().rss / 2**20))
            await asyncio.sleep(30)

    sampler = asyncio.create_task(sample())
    counts = await _traffic(stack, seconds)
    sampler.cancel()
    after = await _held(stack)
    return {
        "seconds": seconds, "warmup_s": warmup_s, "before": before, "after": after,
        "rss_growth": after["rss_mib"] / before["rss_mib"] - 1,
        "peak_mib": max(rss for _, rss in samples), "samples": samples,
        "http": counts.http, "runs": counts.runs, "left": counts.left,
        "sockets": counts.sockets, "resumed": counts.resumed, "errors": counts.errors,
    }  # fmt: skip


def markdown(results: dict[str, Any]) -> list[str]:
    b, a = results["before"], results["after"]
    lines = [
        f"One `steward api` process; {results['seconds']:.0f} s of mixed traffic after a "
        f"{results['warmup_s']:.0f} s warm-up of the same: 4 clients of `GET /todos` (a write "
        "in five, a completion in ten), 8 lanes of assistant streams back to back (100 tokens "
        "50 ms apart; one in ten left after 10 tokens), 20 WebSockets each reconnecting every "
        "2-15 s, 2 readers resuming finished runs. Held figures are read with the process "
        f"idle for {SETTLE_S:.0f} s (pools and timers let go).",
        "",
        f"Traffic: {results['http']:,} HTTP requests, {results['runs']:,} streamed runs "
        f"({results['left']:,} left mid-answer), {results['sockets']:,} WebSocket sessions, "
        f"{results['resumed']:,} resumed readers; {results['errors']} errors.",
        "",
        "| held by the idle process | after warm-up | after the soak | change |",
        "|---|---|---|---|",
        f"| RSS MiB | {b['rss_mib']:.1f} | {a['rss_mib']:.1f} | "
        f"**{results['rss_growth'] * 100:+.1f}%** (peak under load {results['peak_mib']:.1f}) |",
    ]
    for key, name in (("fds", "file descriptors"), ("sockets", "TCP sockets"),
                      ("tasks", "event-loop tasks")):  # fmt: skip
        lines.append(f"| {name} | {b[key]:.0f} | {a[key]:.0f} | {a[key] - b[key]:+.0f} |")
    curve = ", ".join(f"{t:.0f} s: {rss:.0f}" for t, rss in results["samples"])
    lines += ["", f"RSS under load (MiB): {curve}.", ""]
    return lines
