"""`make bench`: serve Steward and the bare baselines side by side, load each with wrk, and
write bench/RESULTS.md with medians and ratios from this one run.

Each server is one uvicorn worker; wrk runs in its own process. Rounds are interleaved so
that noise from the shared machine lands on every target alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "RESULTS.md"
PYTHON = sys.executable


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    requests: int


@dataclass
class Scenario:
    name: str
    server: str
    path: str
    connections: int
    headers: dict[str, str] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.results)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve(server: Server) -> Iterator[Server]:
    OUT.mkdir(parents=True, exist_ok=True)
    log = (OUT / f"{server.name}.log").open("wb")
    server.process = subprocess.Popen(
        server.argv, env=server.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(server.base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not start; see {log.name}")
            time.sleep(0.2)
        yield server
    finally:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
        log.close()


_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * _UNIT[unit]


def wrk(url: str, *, connections: int, duration: int, headers: dict[str, str]) -> Result:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    max_ms = _ms(latency.group(1)) if latency else 0.0
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    return Result(rps=rps, p50_ms=p50, p99_ms=p99, max_ms=max_ms, errors=errors, requests=total)


def seed_user(base: str) -> str:
    """Register a user with 50 todos; return an access token that outlives the run."""
    email = f"bench-{time.time_ns()}@example.com"
    password = "bench-password-1"
    with httpx.Client(base_url=base, timeout=30) as http:
        http.post("/api/v1/auth/register", json={"email": email, "password": password})
        token = http.post(
            "/api/v1/auth/token", data={"username": email, "password": password}
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        for i in range(50):
            http.post(
                "/api/v1/todos",
                json={"title": f"todo {i}", "priority": i % 4, "tags": ["bench"]},
                headers=headers,
            ).raise_for_status()
    return str(token)


def uvicorn_argv(target: str, port: int) -> list[str]:
    return [
        PYTHON, "-m", "uvicorn", target, "--port", str(port), "--workers", "1",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--only", choices=["http", "workers", "streams", "errors", "knowledge",
                                            "reload", "growth", "soak"],
                        help="run one part only")  # fmt: skip
    parser.add_argument("--knowledge-chunks", type=int, default=100_000,
                        help="chunks in the search latency part")  # fmt: skip
    parser.add_argument("--error-requests", type=int, default=300,
                        help="requests of each kind in the errors part")  # fmt: skip
    parser.add_argument("--token-delay", type=float, default=0.05,
                        help="seconds between the fake provider's tokens")  # fmt: skip
    parser.add_argument("--tokens", type=int, default=100, help="tokens per fake reply")
    parser.add_argument("--reloads", type=int, default=3, help="gunicorn reloads per configuration")
    parser.add_argument("--soak-seconds", type=int, default=600,
                        help="minutes of mixed traffic in the soak part, in seconds")  # fmt: skip
    parser.add_argument("--growth-users", type=int, default=10_000,
                        help="users added in the growth part (100 todos each)")  # fmt: skip
    args = parser.parse_args()
    if args.only in (None, "http", "workers", "growth") and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (make bench installs it)")

    from tests.engines import provide_engines

    with provide_engines() as engines:
        from steward.platform import migrations

        migrations.upgrade(engines.database_url)
        base_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        steward_env = {
            **base_env,
            "DATABASE_URL": engines.database_url,
            "REDIS_URL": engines.redis_url,
            "ENVIRONMENT": "prod",
            "SECRET_KEY": "bench-" + "x" * 40,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "ACCESS_TOKEN_TTL_S": "86400",
        }
        steward_env["RATE_LIMIT_AUTHENTICATED"] = "1000000000/minute"  # counted, never hit
        # Seeding signs users up and in from 127.0.0.1, maybe right after a test run did.
        steward_env["RATE_LIMIT_LOGIN"] = "1000000/minute"
        steward_env["RATE_LIMIT_REGISTER"] = "1000000/minute"
        if args.only in (None, "http"):
            http_benchmarks(args, engines, base_env, steward_env)
        if args.only in (None, "workers"):
            worker_benchmarks(args, engines, steward_env)
        if args.only in (None, "streams"):
            stream_benchmarks(args, engines, steward_env)
        if args.only in (None, "errors"):
            error_benchmarks(args, engines)
        if args.only in (None, "knowledge"):
            knowledge_benchmarks(args, engines)
        if args.only in (None, "reload"):
            reload_benchmarks(args, engines)
        if args.only in (None, "growth"):
            growth_benchmarks(args, engines, steward_env)
        if args.only in (None, "soak"):
            soak_benchmarks(args, steward_env)


def report(
    title: str, arguments: str, results: Any, lines: list[str], *, engines: str | None = None
) -> None:
    """Keep a part's figures (bench/out/<title>.json) and rewrite its section of RESULTS.md,
    saying which command wrote it and when."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{title.lower()}.json").write_text(json.dumps(results, indent=2, default=str))
    on = f"; engines: {engines}" if engines else ""
    update_results(title, [
        f"Written by `python -m bench.run {arguments}` (part of `make bench`) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC{on}.", "", *lines,
    ])  # fmt: skip


def worker_benchmarks(args: argparse.Namespace, engines: Any, steward_env: dict[str, str]) -> None:
    from bench import workers

    OUT.mkdir(parents=True, exist_ok=True)
    results = workers.run(engines, steward_env, OUT, rounds=args.rounds, duration=args.duration)
    results["streams"] = workers.run_streams(
        {**steward_env, "CELERY_BROKER_URL": engines.redis_spare(1)}, OUT, n=1000,
        token_delay_s=args.token_delay, tokens=args.tokens,
    )  # fmt: skip
    report("Workers", f"--only workers --duration {args.duration} --rounds {args.rounds}",
           results, workers.markdown(results), engines=engines.kind)  # fmt: skip


def soak_benchmarks(args: argparse.Namespace, steward_env: dict[str, str]) -> None:
    from bench import soak, streams

    stack = streams.start_stack(steward_env, token_delay_s=args.token_delay, tokens=args.tokens,
                                free_port=free_port, out=OUT)  # fmt: skip
    try:
        results = anyio.run(functools.partial(soak.run, stack, seconds=args.soak_seconds))
    finally:
        streams.stop_stack(stack)
    report("Soak", f"--only soak --soak-seconds {args.soak_seconds}", results,
           soak.markdown(results))  # fmt: skip


def growth_benchmarks(args: argparse.Namespace, engines: Any, steward_env: dict[str, str]) -> None:
    from bench import growth

    results = growth.run(engines, steward_env, rounds=args.rounds, duration=args.duration,
                         users=args.growth_users, per_user=100)  # fmt: skip
    report("Growth", f"--only growth --growth-users {args.growth_users}", results,
           growth.markdown(results), engines=engines.kind)  # fmt: skip


def reload_benchmarks(args: argparse.Namespace, engines: Any) -> None:
    from bench import reload

    results = reload.run(engines, OUT, args.reloads)
    (OUT / "reload.json").write_text(json.dumps(results, indent=2))
    update_results("Reloads and restarts", [
        f"Written by `python -m bench.run --only reload --reloads {args.reloads}` (part of "
        f"`make bench`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; engines: {engines.kind}.",
        "", *reload.markdown(results, args.reloads),
    ])  # fmt: skip


def knowledge_benchmarks(args: argparse.Namespace, engines: Any) -> None:
    from tests.engines import provide_vector_engines

    from bench import knowledge

    with provide_vector_engines(engines) as vector:
        from steward.platform import migrations

        if vector is not engines:
            migrations.upgrade(vector.database_url)
        results = anyio.run(knowledge.run, vector.database_url, vector.redis_url,
                            args.knowledge_chunks)  # fmt: skip
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "knowledge.json").write_text(json.dumps(results, indent=2, default=str))
    update_results("Knowledge", [
        f"Written by `python -m bench.run --only knowledge --knowledge-chunks "
        f"{args.knowledge_chunks}` (part of `make bench`) on {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC; PostgreSQL with pgvector: {vector.kind}.", "", *knowledge.markdown(results),
    ])  # fmt: skip


def error_benchmarks(args: argparse.Namespace, engines: Any) -> None:
    from bench import errors

    results = [
        anyio.run(
            errors.measure, engines.database_url, engines.redis_url, log_format, args.error_requests
        )
        for log_format in ("console", "json")
    ]
    update_results("Errors", errors.report(results, args.error_requests))


def stream_benchmarks(args: argparse.Namespace, engines: Any, steward_env: dict[str, str]) -> None:
    from bench import streams

    stack = streams.start_stack(steward_env, token_delay_s=args.token_delay, tokens=args.tokens,
                                free_port=free_port, out=OUT)  # fmt: skip
    try:
        results = anyio.run(streams.run_all, stack, engines.redis_url,
                            args.tokens * args.token_delay, args.tokens)  # fmt: skip
    finally:
        streams.stop_stack(stack)
    lines = streams.markdown(results, token_delay_s=args.token_delay, tokens=args.tokens)
    update_results("Streams", [
        f"Written by `python -m bench.run --only streams --token-delay {args.token_delay} "
        f"--tokens {args.tokens}` (part of `make bench`) on {datetime.now(UTC):%Y-%m-%d %H:%M} "
        f"UTC; engines: {engines.kind}.", "", *lines,
    ])  # fmt: skip


def http_benchmarks(
    args: argparse.Namespace, engines: Any, base_env: dict[str, str], steward_env: dict[str, str]
) -> None:
    servers = {
        "raw-asgi": Server("raw-asgi", [], base_env, free_port()),
        "bare-fastapi": Server("bare-fastapi", [], base_env, free_port()),
        "steward": Server("steward", [], steward_env, free_port()),
        "steward-nocache": Server(
            "steward-nocache", [], {**steward_env, "CACHE_ENABLED": "false"}, free_port()
        ),
        "steward-nolimit": Server(
            "steward-nolimit", [], {**steward_env, "RATE_LIMIT_ENABLED": "false"}, free_port()
        ),
        # Redis on every request: no near cache, no rate-limit leases.
        "steward-exact": Server(
            "steward-exact",
            [],
            {**steward_env, "CACHE_LOCAL_TTL_S": "0", "RATE_LIMIT_MAX_LEASE": "0"},
            free_port(),
        ),
    }
    servers["raw-asgi"].argv = uvicorn_argv("bench.baselines:raw_asgi", servers["raw-asgi"].port)
    servers["bare-fastapi"].argv = uvicorn_argv(
        "bench.baselines:bare_fastapi", servers["bare-fastapi"].port
    )
    for name in ("steward", "steward-nocache", "steward-nolimit", "steward-exact"):
        servers[name].argv = [PYTHON, "-m", "steward", "api", "--port", str(servers[name].port)]

    with (
        serve(servers["raw-asgi"]),
        serve(servers["bare-fastapi"]),
        serve(servers["steward"]),
        serve(servers["steward-nocache"]),
        serve(servers["steward-nolimit"]),
        serve(servers["steward-exact"]),
    ):
        auth = {"Authorization": f"Bearer {seed_user(servers['steward'].base)}"}
        scenarios = [
            Scenario("raw ASGI /health", "raw-asgi", "/health", 50),
            Scenario("bare FastAPI /health", "bare-fastapi", "/health", 50),
            Scenario("Steward /health (all middleware, access log on)", "steward",
                     "/health", 50),
            Scenario("Steward GET /api/v1/users/me", "steward", "/api/v1/users/me", 50, auth),
            Scenario("Steward GET /api/v1/todos?limit=20", "steward",
                     "/api/v1/todos?limit=20", 50, auth),
            Scenario("Steward GET /api/v1/todos?limit=20, cache off", "steward-nocache",
                     "/api/v1/todos?limit=20", 50, auth),
            Scenario("Steward GET /api/v1/users/me, rate limiter off", "steward-nolimit",
                     "/api/v1/users/me", 50, auth),
            Scenario("Steward GET /api/v1/users/me, Redis every request", "steward-exact",
                     "/api/v1/users/me", 50, auth),
            Scenario("Steward GET /api/v1/todos?limit=20, Redis every request", "steward-exact",
                     "/api/v1/todos?limit=20", 50, auth),
            Scenario("Steward GET /api/v1/todos?limit=20, burst", "steward",
                     "/api/v1/todos?limit=20", 200, auth),
        ]  # fmt: skip
        for scenario in scenarios:  # warm-up
            wrk(servers[scenario.server].base + scenario.path, connections=scenario.connections,
                duration=2, headers=scenario.headers)  # fmt: skip
        for round_no in range(args.rounds):
            for scenario in scenarios:
                result = wrk(
                    servers[scenario.server].base + scenario.path,
                    connections=scenario.connections,
                    duration=args.duration,
                    headers=scenario.headers,
                )
                scenario.results.append(result)
                print(
                    f"round {round_no + 1} {scenario.name}: {result.rps:.0f} req/s "
                    f"p50 {result.p50_ms:.2f} ms p99 {result.p99_ms:.2f} ms "
                    f"errors {result.errors}",
                    flush=True,
                )
        limiter = anyio.run(limiter_overhead, engines.redis_url)
    write_results(scenarios, args, engines.kind, limiter)


async def limiter_overhead(redis_url: str, n: int = 3000) -> dict[str, float]:
    """In-process cost of one rate-limit check, next to a bare Redis PING on the same pool."""
    from redis.asyncio import Redis

    from steward.platform.ratelimit import RateLimiter, RateLimitPolicy

    redis = Redis.from_url(redis_url)
    limiter = RateLimiter(redis)
    policy = RateLimitPolicy.parse("bench", "1000000000/minute")
    samples: dict[str, list[float]] = {"ping": [], "check": []}
    try:
        for _ in range(200):
            await limiter.hit(policy, "warm")
        for _ in range(n):
            start = time.perf_counter()
            await redis.ping()
            samples["ping"].append(time.perf_counter() - start)
            start = time.perf_counter()
            await limiter.hit(policy, "user:bench")
            samples["check"].append(time.perf_counter() - start)
    finally:
        await redis.aclose()
    result = {}
    for name, values in samples.items():
        values.sort()
        result[f"{name}_p50_ms"] = values[len(values) // 2] * 1000
        result[f"{name}_p99_ms"] = values[int(len(values) * 0.99)] * 1000
    return result


def write_results(
    scenarios: list[Scenario], args: argparse.Namespace, engines: str, limiter: dict[str, float]
) -> None:
    raw = next(s for s in scenarios if s.server == "raw-asgi").median("rps")
    bare = next(s for s in scenarios if s.server == "bare-fastapi").median("rps")
    lines = [
        f"Written by `make bench` (`python -m bench.run --duration {args.duration} "
        f"--rounds {args.rounds}`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} shared cores; engines: {engines}.",
        "",
        "Each server is one uvicorn worker (uvloop + httptools); load is "
        "`wrk -t1 -c<connections> -d<duration>s --latency`, rounds interleaved across "
        "targets. Figures are medians over the rounds; ratios compare medians from this run.",
        "",
        "| scenario | conns | req/s | p50 ms | p99 ms | max ms | errors | vs bare FastAPI "
        "| vs raw ASGI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        errors = sum(r.errors for r in s.results)
        rps = s.median("rps")
        lines.append(
            f"| {s.name} | {s.connections} | {rps:,.0f} | {s.median('p50_ms'):.2f} | "
            f"{s.median('p99_ms'):.2f} | {max(r.max_ms for r in s.results):.0f} | {errors} | "
            f"{rps / bare:.2f} | {rps / raw:.2f} |"
        )
    lines += [
        "",
        "Per-round figures:",
        "",
        "```",
        *(
            f"{s.name}: " + ", ".join(f"{r.rps:.0f} req/s p99 {r.p99_ms:.1f} ms" for r in s.results)
            for s in scenarios
        ),
        "```",
        "",
        "Rate-limit check in process without leases (`RateLimiter.hit`: one sliding-window "
        "Lua script, one "
        f"Redis round trip), {3000} sequential calls: p50 {limiter['check_p50_ms']:.3f} ms, "
        f"p99 {limiter['check_p99_ms']:.3f} ms; a bare Redis PING on the same pool: p50 "
        f"{limiter['ping_p50_ms']:.3f} ms, p99 {limiter['ping_p99_ms']:.3f} ms.",
        "",
        "Servers:",
        "",
        "- raw ASGI: `python -m uvicorn bench.baselines:raw_asgi --workers 1 --no-access-log`",
        "- bare FastAPI: `python -m uvicorn bench.baselines:bare_fastapi --workers 1 "
        "--no-access-log`",
        "- Steward: `steward api` with ENVIRONMENT=prod, JSON logs at INFO (access log on, "
        "written to a file), metrics, request id, security headers, body limit, rate limits "
        "checked on every API call (authenticated budget raised so the load is counted, never "
        "refused; leases of up to 50 requests), Redis cache and near cache on; "
        "`steward-nocache` sets CACHE_ENABLED=false, `steward-nolimit` "
        "RATE_LIMIT_ENABLED=false, `steward-exact` CACHE_LOCAL_TTL_S=0 and "
        "RATE_LIMIT_MAX_LEASE=0 (a Redis round trip for the principal, the limit and the page "
        "on every request, as before the near cache and leases)",
        "",
    ]
    update_results("HTTP", lines)


SECTIONS = ("HTTP", "Workers", "Streams", "Errors", "Knowledge", "Growth", "Soak",
            "Reloads and restarts", "Analysis")  # fmt: skip


def update_results(title: str, lines: list[str]) -> None:
    """Replace one `## title` section of RESULTS.md, keeping the others: each part of the
    bench rewrites its own, and the hand-written "Analysis" survives regeneration."""
    sections: dict[str, str] = {}
    if RESULTS.exists():
        for chunk in RESULTS.read_text().split("\n## ")[1:]:
            name, _, rest = chunk.partition("\n")
            sections[name.strip()] = rest.strip("\n")
    sections[title] = "\n".join(lines).strip("\n")
    order = [*SECTIONS, *(name for name in sections if name not in SECTIONS)]
    parts = ["# Benchmark results", ""]
    for name in order:
        if name in sections:
            parts += [f"## {name}", "", sections[name], ""]
    RESULTS.write_text("\n".join(parts))
    print(f"wrote {RESULTS} ({title})")


if __name__ == "__main__":
    main()
