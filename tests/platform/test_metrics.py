"""Prometheus metrics: route-template labels, in-progress gauge, multi-process exposition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def app(app: FastAPI) -> FastAPI:
    @app.get("/_test/things/{thing_id}")
    async def read_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    return app


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def test_labels_use_route_templates_not_raw_paths(client: httpx.AsyncClient) -> None:
    for thing in ("alpha-1", "beta-2", "gamma-3"):
        assert (await client.get(f"/_test/things/{thing}")).status_code == 200
    await client.get("/definitely/not/here/12345")

    text = (await client.get("/metrics")).text
    requests = _samples(text, "http_requests_total")
    routes = {labels["route"] for labels, _ in requests}
    assert "/_test/things/{thing_id}" in routes
    assert not any("alpha-1" in r or "12345" in r for r in routes)
    assert "<unmatched>" in routes
    counted = [
        value
        for labels, value in requests
        if labels["route"] == "/_test/things/{thing_id}" and labels["status"] == "200"
    ]
    assert counted and counted[0] >= 3
    buckets = _samples(text, "http_request_duration_seconds_bucket")
    assert any(labels["route"] == "/_test/things/{thing_id}" for labels, _ in buckets)
    assert _samples(text, "http_requests_in_progress")


async def test_metrics_content_type(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")


def test_multiprocess_exposition_sums_processes(tmp_path: Path) -> None:
    """Two processes record into PROMETHEUS_MULTIPROC_DIR; a third renders both."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    record = (
        "from steward.platform.metrics import HTTP_REQUESTS;"
        "HTTP_REQUESTS.labels('GET', '/x', '200').inc(3)"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", record], env=env, check=True)
    render = (
        "from steward.platform.metrics import render_metrics;print(render_metrics()[0].decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", render], env=env, check=True, capture_output=True, text=True
    ).stdout
    values = [v for labels, v in _samples(out, "http_requests_total") if labels["route"] == "/x"]
    assert values == [6.0]
