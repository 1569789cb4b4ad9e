"""The request path's Redis circuit breaker: opens after consecutive failures, refuses at
once while open, lets one probe through per reset period, and closes on a success."""

from __future__ import annotations

import time

import pytest

from steward.platform.redis import CircuitBreaker


def test_opens_after_consecutive_failures_and_probes_once_per_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    breaker = CircuitBreaker(failures=3, reset_s=5.0, name="test")
    for _ in range(2):
        assert breaker.allow()
        breaker.failed()
    breaker.succeeded()  # a success in between: the count starts again
    for _ in range(3):
        assert breaker.allow()
        breaker.failed()
    assert breaker.is_open
    assert not breaker.allow()  # refused at once, without touching Redis
    now[0] += 5.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one per period
    breaker.failed()  # the probe failed: closed for another period
    now[0] += 4.9
    assert not breaker.allow()
    now[0] += 0.2
    assert breaker.allow()  # a probe that neither succeeded nor failed (a pub/sub poll)...
    now[0] += 5.1
    assert breaker.allow()  # ...does not keep the circuit open for good
    breaker.succeeded()
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(10))
