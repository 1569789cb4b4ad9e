"""Rate limits: shared across app instances through Redis, IETF headers, 429 problems,
trusted proxies only, and the failure modes when Redis is unreachable."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from steward.app import create_app
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import PASSWORD, make_account

TODOS = "/api/v1/todos"


@asynccontextmanager
async def serve(engines: EngineSet, *, client_ip: str = "10.1.1.1",
                **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:  # fmt: skip
    async with app_client(
        create_app(make_settings(engines, **overrides)), client_ip=client_ip
    ) as http:
        yield http


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_limit_is_shared_by_two_instances(engines: EngineSet, clean_state: None) -> None:
    limits = {"rate_limit_authenticated": "6/hour"}
    async with serve(engines, **limits) as a, serve(engines, **limits) as b:
        account = await make_account(a)
        statuses = []
        for i in range(7):
            response = await (a if i % 2 else b).get(TODOS, headers=account.headers)
            statuses.append(response.status_code)
        assert statuses == [200] * 6 + [429]
        # Whichever instance the next request reaches, it is still limited.
        assert (await a.get(TODOS, headers=account.headers)).status_code == 429
        assert (await b.get(TODOS, headers=account.headers)).status_code == 429
        # Another user has a budget of their own.
        other = await make_account(b)
        assert (await a.get(TODOS, headers=other.headers)).status_code == 200


async def test_headers_and_problem(engines: EngineSet, clean_state: None) -> None:
    async with serve(engines, rate_limit_authenticated="2/hour") as http:
        account = await make_account(http)
        first = await http.get(TODOS, headers=account.headers)
        assert first.headers["ratelimit-policy"] == '"authenticated";q=2;w=3600'
        assert first.headers["ratelimit"].startswith('"authenticated";r=1;t=')
        await http.get(TODOS, headers=account.headers)
        limited = await http.get(TODOS, headers=account.headers)
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/problem+json"
        assert 1 <= int(limited.headers["retry-after"]) <= 3600
        assert limited.headers["ratelimit"].startswith('"authenticated";r=0;t=')
        body = limited.json()
        assert body["status"] == 429
        assert body["request_id"] == limited.headers["x-request-id"]


async def test_anonymous_limit_is_per_ip(engines: EngineSet, clean_state: None) -> None:
    async with (
        serve(engines, rate_limit_anonymous="3/hour", client_ip="10.0.0.1") as one,
        serve(engines, rate_limit_anonymous="3/hour", client_ip="10.0.0.2") as two,
    ):
        assert [(await one.get(TODOS)).status_code for _ in range(4)] == [401, 401, 401, 429]
        assert (await two.get(TODOS)).status_code == 401


async def test_forwarded_for_counts_only_from_trusted_proxies(
    engines: EngineSet, clean_state: None
) -> None:
    limits = {"rate_limit_anonymous": "2/hour"}
    async with serve(engines, client_ip="203.0.113.9", **limits) as direct:
        spoofed = [
            (await direct.get(TODOS, headers={"x-forwarded-for": f"198.51.100.{i}"})).status_code
            for i in range(3)
        ]
        assert spoofed == [401, 401, 429]  # one peer, whatever it claims
    async with serve(
        engines, client_ip="10.9.9.9", trusted_proxies="10.0.0.0/8", **limits
    ) as proxied:
        for i in range(3):
            response = await proxied.get(
                TODOS, headers={"x-forwarded-for": f"1.2.3.4, 198.51.100.{i}"}
            )
            assert response.status_code == 401  # three different clients behind the proxy


async def test_failed_sign_ins_lock_the_account_across_addresses(
    engines: EngineSet, clean_state: None
) -> None:
    overrides = {"login_lockout_failures": 3, "login_lockout_base_s": 2,
                 "trusted_proxies": "10.0.0.0/8"}  # fmt: skip
    async with serve(engines, client_ip="10.0.0.5", **overrides) as http:
        await make_account(http, email="target@example.com")
        other = await make_account(http)

        async def sign_in(email: str, password: str, ip: int) -> httpx.Response:
            return await http.post(
                "/api/v1/auth/token", data={"username": email, "password": password},
                headers={"x-forwarded-for": f"198.51.100.{ip}"},
            )  # fmt: skip

        statuses = [(await sign_in("target@example.com", "guess-guess-1", i)).status_code
                    for i in range(4)]  # fmt: skip
        assert statuses == [401, 401, 401, 429]  # the third failure locks it
        locked = await sign_in("target@example.com", PASSWORD, 9)  # even the right password
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["retry-after"]) <= 2
        assert (await sign_in(other.email, PASSWORD, 1)).status_code == 200  # others unaffected
        await asyncio.sleep(2.2)  # the lock lapses (refused tries are not counted)
        assert (await sign_in("target@example.com", PASSWORD, 3)).status_code == 200
        # A success resets the count: one more failure does not lock again.
        assert (await sign_in("target@example.com", "guess-guess-2", 4)).status_code == 401
        assert (await sign_in("target@example.com", PASSWORD, 5)).status_code == 200


async def test_successful_sign_ins_behind_one_address_never_lock_anyone_out(
    engines: EngineSet, clean_state: None
) -> None:
    async with serve(engines, rate_limit_login="60/minute", rate_limit_register="5/hour") as http:
        accounts = [await make_account(http) for _ in range(4)]  # 4 sign-ups, 4 sign-ins
        for _ in range(5):  # a NAT's worth of people signing in again and again
            for account in accounts:
                response = await http.post(
                    "/api/v1/auth/token",
                    data={"username": account.email, "password": PASSWORD},
                )
                assert response.status_code == 200
        # Sign-ups have their own budget: the fifth passes, the sixth is refused.
        fifth = await http.post(
            "/api/v1/auth/register", json={"email": "fifth@example.com", "password": PASSWORD}
        )
        sixth = await http.post(
            "/api/v1/auth/register", json={"email": "sixth@example.com", "password": PASSWORD}
        )
        assert (fifth.status_code, sixth.status_code) == (201, 429)  # fmt: skip


async def test_redis_down_fails_open_but_login_fails_closed(
    engines: EngineSet, clean_state: None
) -> None:
    async with serve(engines) as healthy:
        account = await make_account(healthy)
        await healthy.post(TODOS, json={"title": "kept"}, headers=account.headers)
    broken = {"redis_url": f"redis://127.0.0.1:{_closed_port()}/0", "redis_connect_timeout_s": 0.2}
    async with serve(engines, **broken) as http:
        listed = await http.get(TODOS, headers=account.headers)
        assert listed.status_code == 200
        assert [t["title"] for t in listed.json()["items"]] == ["kept"]
        assert "ratelimit" not in listed.headers
        assert (await http.get("/api/v1/users/me", headers=account.headers)).status_code == 200
        login = await http.post(
            "/api/v1/auth/token", data={"username": account.email, "password": PASSWORD}
        )
        assert login.status_code == 503
        assert login.headers["content-type"] == "application/problem+json"
    async with serve(engines, rate_limit_login_fail_open=True, **broken) as lenient:
        login = await lenient.post(
            "/api/v1/auth/token", data={"username": account.email, "password": PASSWORD}
        )
        assert login.status_code == 200


async def test_sliding_window_counts_atomically_and_recovers(
    engines: EngineSet, clean_state: None
) -> None:
    import asyncio

    from redis.asyncio import Redis

    from steward.platform.ratelimit import RateLimiter, RateLimitPolicy

    redis = Redis.from_url(engines.redis_url)
    try:
        limiter = RateLimiter(redis)
        policy = RateLimitPolicy.parse("unit", "20/second")
        # The counter weighs the previous window in: a burst that straddles a window
        # boundary may rightly get one more. Start the burst at the top of Redis' second.
        _, micros = await redis.time()
        await asyncio.sleep(1 - micros / 1_000_000 + 0.02)
        decisions = await asyncio.gather(*(limiter.hit(policy, "k") for _ in range(50)))
        assert sum(d.allowed for d in decisions) == 20
        assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))
        assert all(d.remaining == 0 for d in decisions if not d.allowed)
        assert all(1 <= d.reset_s <= 1 for d in decisions)
        assert (await limiter.hit(policy, "other-key")).allowed
        await asyncio.sleep(2.1)  # two windows later nothing of the burst is left
        again = await limiter.hit(policy, "k")
        assert again.allowed
        assert again.remaining == 19
    finally:
        await redis.aclose()


async def test_leases_save_round_trips_and_never_exceed_the_limit(
    engines: EngineSet, clean_state: None
) -> None:
    import asyncio

    from redis.asyncio import Redis

    from steward.platform.ratelimit import RateLimiter, RateLimitPolicy

    redis = Redis.from_url(engines.redis_url)
    round_trips = 0

    def counted(limiter: RateLimiter) -> RateLimiter:
        script = limiter._script

        async def call(**kwargs: Any) -> Any:
            nonlocal round_trips
            round_trips += 1
            return await script(**kwargs)

        limiter._script = call  # type: ignore[assignment]
        return limiter

    try:
        # Two processes sharing one budget, each leasing up to 50 requests at a time.
        here, there = (
            counted(RateLimiter(redis, max_lease=50)),
            counted(RateLimiter(redis, max_lease=50)),
        )
        policy = RateLimitPolicy.parse("unit", "1000/hour")

        async def burst() -> list[bool]:  # 100 concurrent requests on each side
            decisions = await asyncio.gather(
                *(limiter.hit(policy, "k") for limiter in (here, there) for _ in range(100))
            )
            return [d.allowed for d in decisions]

        first = [allowed for _ in range(4) for allowed in await burst()]
        assert all(first)
        assert round_trips <= 40  # 800 requests: most were admitted from a lease
        rest = [allowed for _ in range(4) for allowed in await burst()]
        # Leased requests count at once, so the two together admit the limit, no more.
        # (An hour's window: a run straddling two windows would be a 1-in-7,000 event.)
        assert sum(first) + sum(rest) == 1000
        here_only = [
            await here.hit(RateLimitPolicy.parse("solo", "1000/hour"), "k") for _ in range(60)
        ]
        # The RateLimit header still counts down one by one within a process.
        remaining = [d.remaining for d in here_only]
        assert remaining == list(range(999, 939, -1))
    finally:
        await redis.aclose()


async def test_a_route_that_needs_redis_answers_503_while_it_is_down(
    engines: EngineSet, clean_state: None
) -> None:
    async with serve(engines, assistant_offline_delay_s=0) as healthy:
        account = await make_account(healthy)
        conversation = await healthy.post(
            "/api/v1/assistant/conversations", json={}, headers=account.headers
        )
        reply = await healthy.post(
            f"/api/v1/assistant/conversations/{conversation.json()['id']}/messages",
            json={"content": "hi"}, headers=account.headers,
        )  # fmt: skip
        run_id = reply.json()["run"]["id"]
    broken = {"redis_url": f"redis://127.0.0.1:{_closed_port()}/0", "redis_connect_timeout_s": 0.2}
    async with serve(engines, **broken) as http:
        events = await http.get(f"/api/v1/assistant/runs/{run_id}/events", headers=account.headers)
    assert events.status_code == 503
    assert events.headers["retry-after"] == "5"
    assert events.json()["type"].endswith("/dependency-unavailable")
