"""Streaming benchmarks (part of `make bench`): assistant SSE streams against the fake
provider, resumable run readers, and WebSocket notification fan-out.

The clients speak HTTP/1.1 and SSE over raw asyncio streams (no client library), so that the
load generator costs as little CPU as possible on the same two cores as the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Sampler:
    """Peak RSS of a process while a scenario runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib(self.pid))
            await asyncio.sleep(0.05)

    def __enter__(self) -> Sampler:
        self.peak = rss_kib(self.pid)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def sse(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> AsyncIterator[tuple[float, str, str, str]]:
    """(receive time, event, id, data) for each SSE event of one request (chunked or not)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    head = [f"{method} {path} HTTP/1.1", "Host: bench", "Accept: text/event-stream",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    if body:
        head.append("Content-Type: application/json")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    try:
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"{path}: {status.decode().strip()}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            chunked |= line.lower().startswith(b"transfer-encoding: chunked")
        buffer = b""
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                buffer += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
                buffer += data
            now = time.perf_counter()
            buffer = buffer.replace(b"\r\n", b"\n")  # sse-starlette separates with CRLF
            while b"\n\n" in buffer:
                raw, buffer = buffer.split(b"\n\n", 1)
                event, entry_id, payload = "message", "", ""
                for line in raw.decode().split("\n"):
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("id: "):
                        entry_id = line[4:]
                    elif line.startswith("data: "):
                        payload = line[6:]
                if payload or event != "message":
                    yield now, event, entry_id, payload
    finally:
        writer.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def histogram_quantile(base: str, name: str, q: float, before: dict[str, float]) -> float:
    """The q-quantile (bucket upper bound) of a Prometheus histogram's growth since `before`."""
    after = await histogram(base, name)
    total = after.get("+Inf", 0) - before.get("+Inf", 0)
    if total <= 0:
        return 0.0
    for bound, count in sorted(((float(k), v) for k, v in after.items() if k != "+Inf")):
        if count - before.get(_key(bound), 0) >= q * total:
            return bound
    return float("inf")


def _key(bound: float) -> str:
    return repr(bound)


async def histogram(base: str, name: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base) as http:
        text = (await http.get("/metrics")).text
    buckets = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            value = float(line.rsplit(" ", 1)[1])
            buckets[bound if bound == "+Inf" else _key(float(bound))] = value
    return buckets


@dataclass
class Stack:
    """A fake provider and a Steward API process, with a seeded user and conversations."""

    provider_port: int
    port: int
    process: subprocess.Popen[bytes]
    fake: subprocess.Popen[bytes]
    api_env: dict[str, str]  # to start the API process again (restart_api)
    out: Path  # where its log goes
    workers: int = 0  # 0: `steward api`; else gunicorn with this many workers
    token: str = ""
    user_id: str = ""
    conversations: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_stack(env: dict[str, str], *, token_delay_s: float, tokens: int, free_port: Any,
                out: Path, workers: int = 0) -> Stack:  # fmt: skip
    """The fake provider and Steward: `steward api`, or with `workers`, gunicorn with the
    deployment's config and that many workers."""
    provider_port, port = free_port(), free_port()
    out.mkdir(parents=True, exist_ok=True)
    fake = subprocess.Popen(
        [PYTHON, "-m", "tests.fakes.openai_server", "--port", str(provider_port),
         "--delay", str(token_delay_s), "--tokens", str(tokens)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        stdout=(out / "fake-provider.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    providers = {"fake": {"base_url": f"http://127.0.0.1:{provider_port}/v1",
                          "model": "fake-model", "api_key": "bench",
                          "context_window": 32768, "max_output_tokens": 512,
                          "first_token_timeout_s": 60, "idle_timeout_s": 60,
                          "total_timeout_s": 300}}  # fmt: skip
    api_env = {**env, "ASSISTANT_PROVIDERS": json.dumps(providers),
               # A pool with no overflow: overflow connections are opened for a burst and
               # closed when returned, and that churn cost ~1 ms of CPU per run in a burst.
               "RATE_LIMIT_ASSISTANT": "1000000000/minute", "DB_POOL_SIZE": "50",
               "DB_MAX_OVERFLOW": "0", "REALTIME_QUEUE_SIZE": "1000"}  # fmt: skip
    (out / "steward-streams.log").write_bytes(b"")
    if workers:
        api_env |= {"HOST": "127.0.0.1", "PORT": str(port), "WEB_CONCURRENCY": str(workers),
                    "PROMETHEUS_MULTIPROC_DIR": str(out / "metrics")}  # fmt: skip
    stack = Stack(provider_port=provider_port, port=port, fake=fake, api_env=api_env, out=out,
                  process=_api(port, api_env, out, workers), workers=workers)  # fmt: skip
    _wait_ready(stack)
    return stack


def _api(port: int, env: dict[str, str], out: Path, workers: int = 0) -> subprocess.Popen[bytes]:
    argv = [PYTHON, "-m", "steward", "api", "--port", str(port)]
    if workers:
        argv = [str(Path(PYTHON).parent / "gunicorn"), "-c", "deploy/gunicorn.conf.py",
                "steward.app:app"]  # fmt: skip
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=(out / "steward-streams.log").open("ab"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_ready(stack: Stack) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(f"{stack.base}/health").status_code == 200
                and httpx.get(f"http://127.0.0.1:{stack.provider_port}/v1/models").status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the streaming stack did not start")


async def restart_api(stack: Stack) -> None:
    """A new API process on the same port: the next scenario starts on a fresh heap."""
    stack.process.terminate()
    await asyncio.to_thread(stack.process.wait, 20)
    stack.process = _api(stack.port, stack.api_env, stack.out, stack.workers)
    await asyncio.to_thread(_wait_ready, stack)


def stop_stack(stack: Stack) -> None:
    for process in (stack.process, stack.fake):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


async def seed(stack: Stack, conversations: int) -> None:
    email = f"streams-{time.time_ns()}@example.com"
    async with httpx.AsyncClient(base_url=stack.base, timeout=30) as http:
        credentials = {"email": email, "password": "bench-password-1"}
        registered = await http.post("/api/v1/auth/register", json=credentials)
        stack.user_id = registered.json()["id"]
        stack.token = (await http.post("/api/v1/auth/token", data={
            "username": email, "password": "bench-password-1"})).json()["access_token"]  # fmt: skip
        for _ in range(conversations):
            created = await http.post(
                "/api/v1/assistant/conversations", json={}, headers=stack.auth
            )
            stack.conversations.append(created.json()["id"])


# --- scenario: N concurrent assistant streams ------------------------------------------------


async def _staggered(n: int, spread_s: float, one: Any) -> list[Any]:
    """Start `n` calls evenly over `spread_s` (one reply's length): once the first ones
    are still streaming when the last ones start, about `n` streams are open at once."""

    async def later(i: int) -> Any:
        await asyncio.sleep(i * spread_s / n)
        return await one(i)

    return list(await asyncio.gather(*(later(i) for i in range(n))))


async def _own_first_tokens(stack: Stack) -> dict[str, float]:
    """The fake provider's own time to first token per request since the last call (from its
    handler's start to the first token written), keyed by the question asked."""
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{stack.provider_port}/_fake/first-token")
    return {k: float(v) for k, v in response.json().items()}


async def _provider_direct(
    stack: Stack, n: int, spread_s: float
) -> tuple[list[float], list[float]]:
    """Client TTFT straight from the fake, same concurrency; and each one minus the fake's own
    share (the measurement's floor: the client and the loopback hop)."""
    await _own_first_tokens(stack)
    ttft: dict[str, float] = {}

    async def one(i: int) -> None:
        asked = f"direct {n}.{i}"
        body = json.dumps({"model": "fake-model", "stream": True,
                           "messages": [{"role": "user", "content": asked}]}).encode()  # fmt: skip
        started = time.perf_counter()
        async for now, _, _, data in sse(stack.provider_port, "POST", "/v1/chat/completions",
                                         {"Authorization": "Bearer x"}, body):  # fmt: skip
            if '"content":"w' in data.replace(" ", ""):
                ttft[asked] = now - started
                return

    await _staggered(n, spread_s, one)
    own = await _own_first_tokens(stack)
    return list(ttft.values()), [t - own[k] for k, t in ttft.items() if k in own]


async def assistant_streams(
    stack: Stack, n: int, spread_s: float, *, tokens: int, rounds: int = 1
) -> dict[str, Any]:
    """`rounds` rounds of `n` staggered streams. Each stream's added time is its time to first
    token through Steward minus the provider's own for the same request, so a provider slowed
    by the load on these shared cores is not counted as Steward's."""
    direct, floor = await _provider_direct(stack, n, spread_s)
    before_lag = await histogram(stack.base, "steward_event_loop_lag_seconds")
    ttft: dict[str, float] = {}
    accepted: dict[str, float] = {}  # the `run` event: the request's own work is done
    own: dict[str, float] = {}
    rates: list[float] = []
    errors = 0

    async def one(round_no: int, i: int, counted: list[int]) -> None:
        nonlocal errors
        label = f"question {n}.{round_no}.{i}"
        conversation = stack.conversations[i % len(stack.conversations)]
        body = json.dumps({"content": label}).encode()
        started = time.perf_counter()
        try:
            async for now, event, _, _ in sse(
                stack.port, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
                stack.auth, body,
            ):  # fmt: skip
                if event == "token":
                    counted[0] += 1
                    ttft.setdefault(label, now - started)
                elif event == "run":
                    accepted[label] = now - started
                elif event == "error":
                    errors += 1
        except (OSError, RuntimeError):
            errors += 1

    for round_no in range(rounds):
        await _own_first_tokens(stack)
        counted = [0]
        started = time.perf_counter()
        await _staggered(n, spread_s, lambda i, r=round_no, c=counted: one(r, i, c))
        rates.append(counted[0] / (time.perf_counter() - started))
        own.update(await _own_first_tokens(stack))
    lag_p99 = await histogram_quantile(
        stack.base, "steward_event_loop_lag_seconds", 0.99, before_lag
    )
    added = [t - own[k] for k, t in ttft.items() if k in own]
    steward = list(ttft.values())
    return {
        "n": n, "rounds": rounds, "samples": len(added),
        "own_p50": statistics.median(own.values()), "own_p99": pct(list(own.values()), 0.99),
        "direct_p50": statistics.median(direct), "direct_p99": pct(direct, 0.99),
        "floor_p50": statistics.median(floor), "floor_p99": pct(floor, 0.99),
        "p50": statistics.median(steward) if steward else float("nan"), "p99": pct(steward, 0.99),
        "added_p50": statistics.median(added) if added else float("nan"),
        "added_p99": pct(added, 0.99), "added_max": max(added, default=float("nan")),
        "tokens_per_s": statistics.median(rates), "errors": errors,
        "run_event_p50": statistics.median(accepted.values()),
        "run_event_p99": pct(list(accepted.values()), 0.99),
        # (added, time to the run event, provider's own) in ms for the slowest streams
        "slowest": sorted(((round((t - own.get(k, 0)) * 1000, 1),
                            round(accepted.get(k, 0) * 1000, 1), round(own.get(k, 0) * 1000, 1),
                            k) for k, t in ttft.items()), reverse=True)[:8],
        "offered_per_s": n * tokens / (2 * spread_s) if spread_s else float("nan"),
        "lag_p99_ms": lag_p99 * 1000,
    }  # fmt: skip


async def stream_memory(stack: Stack, n: int) -> dict[str, Any]:
    """The API process's RSS with `n` streams open at once, on a heap that no other scenario
    has grown yet (after a few streams have filled the process's caches and pools): what an
    open stream costs, its provider connection and buffers included."""

    async def one(i: int) -> int:
        conversation = stack.conversations[i % len(stack.conversations)]
        body = json.dumps({"content": f"memory {n}.{i}"}).encode()
        tokens = 0
        async for _, event, _, _ in sse(
            stack.port, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
            stack.auth, body,
        ):  # fmt: skip
            tokens += event == "token"
        return tokens

    await asyncio.gather(*(one(i) for i in range(5)))
    idle = rss_kib(stack.process.pid)
    with Sampler(stack.process.pid) as sampler:
        delivered = await asyncio.gather(*(one(i) for i in range(n)))
    return {
        "n": n, "idle_mib": idle / 1024, "peak_mib": sampler.peak / 1024,
        "kib_per_stream": (sampler.peak - idle) / n, "complete": sum(d > 0 for d in delivered),
    }  # fmt: skip


# --- scenario: resumable readers -------------------------------------------------------------


async def redis_calls(redis_url: str) -> dict[str, int]:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def resumable_readers(
    stack: Stack, redis_url: str, runs: int, per_run: int, spread_s: float = 0.0
) -> dict[str, Any]:
    """`runs` runs, each followed by `per_run` readers from its `run` event on; all started
    at once, or evenly over `spread_s` (about `runs` streaming at any time, as in the
    assistant streams scenario)."""
    idle = rss_kib(stack.process.pid)
    calls_before = await redis_calls(redis_url)
    lags: list[float] = []
    delivered = 0
    errors = 0
    readers_done = 0

    async def read(run_id: str) -> None:
        nonlocal delivered, errors, readers_done
        connected_ms = time.time() * 1000
        try:
            async for _, event, entry_id, _ in sse(
                stack.port, "GET", f"/api/v1/assistant/runs/{run_id}/events", stack.auth
            ):
                delivered += 1
                written_ms = int(entry_id.split("-")[0]) if entry_id else 0
                if written_ms >= connected_ms:  # live, not the catch-up replay
                    lags.append(time.time() * 1000 - written_ms)
                if event == "done":
                    break
        except (OSError, RuntimeError):
            errors += 1
        readers_done += 1

    async def produce(i: int) -> None:
        conversation = stack.conversations[i % len(stack.conversations)]
        body = json.dumps({"content": f"question {i}"}).encode()
        readers: list[asyncio.Task[None]] = []
        async for _, event, _, data in sse(
            stack.port, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
            stack.auth, body,
        ):  # fmt: skip
            if event == "run":
                run_id = json.loads(data)["run_id"]
                readers = [asyncio.create_task(read(run_id)) for _ in range(per_run)]
        await asyncio.gather(*readers)

    with Sampler(stack.process.pid) as sampler:
        started = time.perf_counter()
        await _staggered(runs, spread_s, produce)
        wall = time.perf_counter() - started
    calls_after = await redis_calls(redis_url)
    grew = {k: calls_after.get(k, 0) - calls_before.get(k, 0) for k in calls_after}
    readers = runs * per_run
    return {
        "runs": runs, "readers": readers, "spread_s": spread_s, "delivered": delivered,
        "events_per_s": delivered / wall,
        "lag_p50_ms": statistics.median(lags) if lags else float("nan"),
        "lag_p99_ms": pct(lags, 0.99), "errors": errors,
        "redis_per_event": sum(grew.values()) / max(1, delivered),
        "xread_per_event": grew.get("xread", 0) / max(1, delivered),
        "kib_per_reader": (sampler.peak - idle) / readers, "wall": wall,
    }  # fmt: skip


# --- scenario: WebSocket fan-out -------------------------------------------------------------


async def websocket_fanout(
    stack: Stack, redis_url: str, clients: int, messages: int
) -> dict[str, Any]:
    from redis.asyncio import Redis
    from websockets.asyncio.client import connect

    idle = rss_kib(stack.process.pid)
    url = f"ws://127.0.0.1:{stack.port}/api/v1/realtime?access_token={stack.token}"
    sockets = []
    for start in range(0, clients, 100):  # connect in waves: the accept backlog is finite
        sockets += await asyncio.gather(
            *(connect(url, max_queue=None) for _ in range(start, min(clients, start + 100)))
        )
    for ws in sockets:
        await ws.recv()  # ready
    connected = rss_kib(stack.process.pid)
    latencies: list[float] = []

    async def listen(ws: Any) -> None:
        got = 0
        while got < messages:
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if event.get("type") == "bench":
                latencies.append(time.time() - event["sent_at"])
                got += 1

    listeners = [asyncio.create_task(listen(ws)) for ws in sockets]
    redis = Redis.from_url(redis_url)
    try:
        for _ in range(messages):
            await redis.publish(f"user:{stack.user_id}",
                                json.dumps({"type": "bench", "sent_at": time.time()}))  # fmt: skip
            await asyncio.sleep(0.05)
        _, pending = await asyncio.wait(listeners, timeout=60)
    finally:
        await redis.aclose()
        for ws in sockets:
            await ws.close()
    return {
        "clients": clients, "messages": messages, "delivered": len(latencies),
        "expected": clients * messages, "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000, "max_ms": max(latencies) * 1000,
        "kib_per_connection": (connected - idle) / clients, "incomplete": len(pending),
    }  # fmt: skip


async def run_all(stack: Stack, redis_url: str, reply_s: float, tokens: int) -> dict[str, Any]:
    await seed(stack, conversations=100)
    results: dict[str, Any] = {"streams": [], "readers": None, "fanout": None}
    # Memory first, and each memory figure on a fresh process: later scenarios reuse memory
    # that earlier ones freed, which would hide the growth.
    results["memory"] = await stream_memory(stack, 100)
    print(f"stream memory: {results['memory']}", flush=True)
    await restart_api(stack)
    # Then the fan-out, whose memory per connection is read on that fresh process.
    results["fanout"] = await websocket_fanout(stack, redis_url, clients=1000, messages=20)
    print(f"websocket fan-out: {results['fanout']}", flush=True)
    # Warm-up at the measured concurrency: pools (database, provider connections, Redis)
    # grow to it once, as they have in a process that has been serving for a while.
    await assistant_streams(stack, 100, reply_s, tokens=tokens)
    for n, rounds in ((100, 3), (1000, 1)):
        result = await assistant_streams(stack, n, reply_s, tokens=tokens, rounds=rounds)
        print(f"assistant streams {n}: {result}", flush=True)
        results["streams"].append(result)
    # A burst: 100 runs started in the same instant (no spread), five times.
    burst = await assistant_streams(stack, 100, 0.0, tokens=tokens, rounds=5)
    print(f"assistant streams, 100 at once: {burst}", flush=True)
    results["streams"].append({**burst, "burst": True})
    results["readers"] = [
        await resumable_readers(stack, redis_url, runs=100, per_run=10, spread_s=spread)
        for spread in (0.0, reply_s)
    ]
    print(f"resumable readers: {results['readers']}", flush=True)
    return results


def _readers_row(r: dict[str, Any]) -> str:
    started = "at once" if not r["spread_s"] else f"over {r['spread_s']:g} s"
    return (
        f"| {started} | {r['delivered']:,} | {r['events_per_s']:,.0f} | {r['lag_p50_ms']:.1f} / "
        f"{r['lag_p99_ms']:.1f} | {r['redis_per_event']:.2f} / {r['xread_per_event']:.2f} | "
        f"{r['kib_per_reader']:.0f} | {r['errors']} |"
    )


def markdown(results: dict[str, Any], *, token_delay_s: float, tokens: int) -> list[str]:
    lines = [
        f"Fake provider: `python -m tests.fakes.openai_server --delay {token_delay_s} --tokens "
        f"{tokens}` ({tokens} tokens, {token_delay_s * 1000:.0f} ms apart); Steward: one "
        "`steward api` process (ENVIRONMENT=prod, JSON logs). Clients are raw asyncio sockets "
        "in the bench process, on the same 2 cores.",
        "",
        "### Assistant SSE streams (`POST .../messages`, `Accept: text/event-stream`)",
        "",
        "N streams start evenly over one reply's length, so about N are open at once. The "
        "wall time and tokens/s show whether the server kept up with the provider's rate. "
        '"At once": all N POSTs sent in the same instant (a burst of run starts).',
        "",
        "| streams (rounds) | provider's own TTFT p50 / p99 ms | client TTFT direct p50 / p99 "
        "ms | via Steward p50 / p99 ms | **added by Steward p50 / p99 ms** | `run` event p50 / "
        "p99 ms | tokens/s delivered (offered) | errors | event-loop lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(a: float, b: float) -> str:
        return f"{a * 1000:.1f} / {b * 1000:.1f}"

    for r in results["streams"]:
        lines.append(
            f"| {r['n']}{' at once' if r.get('burst') else ''} ({r['rounds']}) | "
            f"{ms(r['own_p50'], r['own_p99'])} | "
            f"{ms(r['direct_p50'], r['direct_p99'])} | {ms(r['p50'], r['p99'])} | "
            f"**{ms(r['added_p50'], r['added_p99'])}** | "
            f"{ms(r['run_event_p50'], r['run_event_p99'])} | {r['tokens_per_s']:,.0f} "
            f"({'-' if r.get('burst') else format(r['offered_per_s'], ',.0f')}) | "
            f"{r['errors']} | {r['lag_p99_ms']:.0f} |"
        )
    readers = results["readers"]
    f = results["fanout"]
    m = results["memory"]
    lines += [
        "",
        f"**Memory per open stream: {m['kib_per_stream']:.0f} KiB.** {m['n']} streams opened at "
        "once on a fresh API process (after 5 streams filled its caches and pools) took its "
        f"RSS from {m['idle_mib']:.1f} to {m['peak_mib']:.1f} MiB at the peak, the provider "
        f"connection and every buffer of each stream included ({m['complete']} of {m['n']} "
        "streams delivered tokens).",
        "",
        "TTFT via Steward runs from sending the POST to the first `token` event (it includes "
        "authentication, the run's rows, the provider call and the first event's delivery). "
        "The provider's own TTFT is what the fake measured for the same request, from its "
        "handler's start to its first token written; **added** is the difference, stream by "
        "stream, pooled over the rounds (300 samples at 100 streams, after an unmeasured "
        "round at the same concurrency). The `run` event is Steward's first, sent once the "
        "request has stored the run (its commit overlaps the provider call). Client TTFT "
        "direct is the same clients straight against the fake at the same concurrency; the "
        "same subtraction there, the measurement's own floor, is "
        + ", ".join(
            f"{ms(r['floor_p50'], r['floor_p99'])} ms at {r['n']}"
            f"{' at once (the fake itself queues a burst)' if r.get('burst') else ''}"
            for r in results["streams"]
        )
        + ".",
        "",
        f"### Resumable readers: {readers[0]['readers']} readers of {readers[0]['runs']} runs "
        "(`GET /runs/{id}/events`)",
        "",
        "| runs started | events delivered | events/s | event-to-client lag p50 / p99 ms | "
        "Redis commands per event (all / XREAD) | KiB per reader | errors |",
        "|---|---|---|---|---|---|---|",
        *(_readers_row(r) for r in readers),
        "",
        "Runs started at once: the 100 POSTs and the 1,000 readers' GETs arrive in the same "
        "instant. Over a reply's length: up to about 100 runs stream at once, as in the "
        "assistant streams scenario, at the same rate of events.",
        "",
        "Lag is the time from the event's production (its stream id, assigned when the run "
        "emits it) to its arrival at the client, counted for events produced after the "
        "reader connected.",
        "",
        f"### Notification fan-out: {f['clients']} WebSocket clients of one user, "
        f"{f['messages']} messages",
        "",
        "| delivered / expected | p50 ms | p99 ms | max ms | KiB per connection |",
        "|---|---|---|---|---|",
        f"| {f['delivered']:,} / {f['expected']:,} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | "
        f"{f['max_ms']:.1f} | {f['kib_per_connection']:.0f} |",
        "",
        "Latency runs from the Redis PUBLISH on `user:{id}` to the client's receipt, through "
        "the API process's single Pub/Sub subscription and per-connection queues.",
    ]
    return lines
